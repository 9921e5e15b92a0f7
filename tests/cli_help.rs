//! Every binary's clap definition is consistent, every command and
//! subcommand explains itself in `--help` within 80 columns, and `--version`
//! answers. The exit codes are one table: the README's "Exit codes", each
//! binary's `--help` and its man page say what `cli::BINARIES` says.

#[path = "../examples/gen-docs/docs.rs"]
mod docs;

use phoenix_hooks::{cli, exit};

fn commands() -> Vec<clap::Command> {
    docs::commands()
}

fn check(cmd: &mut clap::Command, path: &str, seen: &mut usize) {
    let help = cmd.render_long_help().to_string();
    assert!(help.lines().count() > 3, "{path}: no help");
    for line in help.lines() {
        assert!(
            line.chars().count() <= 80,
            "{path}: help line over 80 columns:\n{line}"
        );
    }
    *seen += 1;
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .filter(|n| n != "help")
        .collect();
    for name in names {
        let sub = cmd.find_subcommand_mut(&name).unwrap();
        check(sub, &format!("{path} {name}"), seen);
    }
}

#[test]
fn help_fits_80_columns_everywhere() {
    let mut seen = 0;
    for mut cmd in commands() {
        cmd.clone().debug_assert();
        cmd.build();
        let name = cmd.get_name().to_string();
        check(&mut cmd, &name, &mut seen);
    }
    assert!(seen >= 17, "only {seen} commands checked");
}

#[test]
fn binaries_answer_version() {
    for bin in [
        env!("CARGO_BIN_EXE_phoenix-ca"),
        env!("CARGO_BIN_EXE_phoenix-hook"),
        env!("CARGO_BIN_EXE_phoenix-mount"),
        env!("CARGO_BIN_EXE_phoenix-renew"),
        env!("CARGO_BIN_EXE_phoenix-swarm"),
        env!("CARGO_BIN_EXE_phoenix-deploy"),
    ] {
        let out = std::process::Command::new(bin)
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
}

/// The rows of the README's "## Exit codes" table: code, meaning, binaries.
fn readme_exit_table() -> Vec<[String; 3]> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split_once("\n## Exit codes\n")
        .expect("README has '## Exit codes'")
        .1;
    let section = section.split("\n## ").next().unwrap();
    let rows: Vec<[String; 3]> = section
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(2) // the header and its rule
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect();
            cells
                .try_into()
                .unwrap_or_else(|c| panic!("not 3 cells: {c:?}"))
        })
        .collect();
    assert!(!rows.is_empty(), "no table under '## Exit codes'");
    rows
}

#[test]
fn readme_exit_table_is_the_codes_the_binaries_document() {
    let expected: Vec<[String; 3]> = exit::CONTRACT
        .iter()
        .map(|status| {
            let codes: Vec<String> = status.codes.split('/').map(|c| format!("`{c}`")).collect();
            let users: Vec<String> = cli::BINARIES
                .iter()
                .filter(|(_, about)| about.exit.iter().any(|(s, _)| s == status))
                .map(|(name, _)| format!("`{name}`"))
                .collect();
            let users = if users.len() == cli::BINARIES.len() {
                "all".to_string()
            } else {
                users.join(", ")
            };
            [codes.join("/"), status.meaning.to_string(), users]
        })
        .collect();
    assert_eq!(readme_exit_table(), expected);
}

#[test]
fn every_binary_documents_its_exit_statuses_in_the_contracts_order() {
    assert_eq!(cli::BINARIES.len(), commands().len());
    for (name, about) in cli::BINARIES {
        let order: Vec<usize> = about
            .exit
            .iter()
            .map(|(s, _)| exit::CONTRACT.iter().position(|c| c == s).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{name}: {order:?}");
        assert_eq!(
            &order[..3],
            [0, 1, 2],
            "{name}: 0, 1 and 2 are always possible"
        );
    }
}

#[test]
fn help_and_man_page_list_the_same_exit_statuses() {
    let out = tempfile::tempdir().unwrap();
    docs::write_all(out.path()).unwrap();
    for mut cmd in commands() {
        let name = cmd.get_name().to_string();
        let (_, about) = cli::BINARIES.iter().find(|(n, _)| *n == name).unwrap();
        let help = cmd.render_long_help().to_string();
        let block = about.exit_status_help();
        assert!(
            help.contains(&block),
            "{name} --help lacks:\n{block}\n---\n{help}"
        );
        assert!(help.starts_with(about.text), "{name}");

        let page = std::fs::read_to_string(out.path().join(format!("man/man1/{name}.1"))).unwrap();
        let mut at = 0;
        for section in [
            "DESCRIPTION",
            "OPTIONS",
            "EXIT STATUS",
            "ENVIRONMENT",
            "FILES",
            "EXAMPLES",
            "SEE ALSO",
        ] {
            let found = page[at..]
                .find(&format!(".SH \"{section}\"\n"))
                .or_else(|| page[at..].find(&format!(".SH {section}\n")))
                .unwrap_or_else(|| panic!("{name}.1: no {section} after byte {at}:\n{page}"));
            at += found;
        }
        let exit_section = page.split(".SH \"EXIT STATUS\"").nth(1).unwrap();
        let exit_section = exit_section.split("\n.SH ").next().unwrap();
        let tags: Vec<&str> = exit_section
            .split(".TP\n")
            .skip(1)
            .map(|item| item.lines().next().unwrap())
            .collect();
        let codes: Vec<String> = about
            .exit
            .iter()
            .map(|(s, _)| format!("\\fB{}\\fR", s.codes))
            .collect();
        assert_eq!(tags, codes, "{name}.1 EXIT STATUS");
        // The statuses are not said twice: DESCRIPTION is the text alone.
        assert_eq!(page.matches("Exit status:").count(), 0, "{name}.1");

        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let file = format!("man/man1/{name}-{}.1", sub.get_name());
            let page = std::fs::read_to_string(out.path().join(&file)).unwrap();
            assert!(page.contains(".SH \"EXIT STATUS\""), "{file}");
            assert!(
                page.contains(&format!("\\fB{}\\fR(1)", name.replace('-', "\\-"))),
                "{file}: SEE ALSO"
            );
        }
    }
}
