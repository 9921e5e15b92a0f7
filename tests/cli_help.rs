//! Every binary's clap definition is consistent, every command and
//! subcommand explains itself in `--help` within 80 columns, and `--version`
//! answers.

use clap::CommandFactory;
use phoenix_hooks::cli;

fn commands() -> Vec<clap::Command> {
    vec![
        cli::ca::Args::command(),
        cli::hook::Args::command(),
        cli::mount::Args::command(),
        cli::renew::Args::command(),
        cli::swarm::Args::command(),
    ]
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
    assert!(seen >= 14, "only {seen} commands checked");
}

#[test]
fn binaries_answer_version() {
    for bin in [
        env!("CARGO_BIN_EXE_phoenix-ca"),
        env!("CARGO_BIN_EXE_phoenix-hook"),
        env!("CARGO_BIN_EXE_phoenix-mount"),
        env!("CARGO_BIN_EXE_phoenix-renew"),
        env!("CARGO_BIN_EXE_phoenix-swarm"),
    ] {
        let out = std::process::Command::new(bin)
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
}
