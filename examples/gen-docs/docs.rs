//! Man pages and shell completions generated from the binaries' clap
//! definitions, so they never drift from `--help`. Shared by the
//! `gen-docs` example (used by scripts/build-deb.sh) and tests/package.rs.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;
use phoenix_hooks::cli;

/// Every shipped binary's clap definition.
pub fn commands() -> Vec<clap::Command> {
    vec![
        cli::ca::Args::command(),
        cli::deploy::Args::command(),
        cli::hook::Args::command(),
        cli::mount::Args::command(),
        cli::renew::Args::command(),
        cli::swarm::Args::command(),
    ]
}

/// Write `man/man1/*.1` and `completions/{bash,zsh,fish}/` under `out`.
pub fn write_all(out: &Path) -> std::io::Result<()> {
    let man = out.join("man/man1");
    std::fs::create_dir_all(&man)?;
    for cmd in commands() {
        // One page per binary and per subcommand (`phoenix-ca-wait.1`),
        // cross-referenced under SEE ALSO.
        clap_mangen::generate_to(cmd.clone(), &man)?;
        for (shell, dir, file) in [
            (Shell::Bash, "bash", "{}"),
            (Shell::Zsh, "zsh", "_{}"),
            (Shell::Fish, "fish", "{}.fish"),
        ] {
            let dir = out.join("completions").join(dir);
            std::fs::create_dir_all(&dir)?;
            let name = cmd.get_name().to_string();
            let path = dir.join(file.replace("{}", &name));
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut script);
            if shell == Shell::Bash {
                let text = String::from_utf8(script).map_err(std::io::Error::other)?;
                script = fix_bash_states(&text, &name)
                    .map_err(|e| std::io::Error::other(format!("{name}: bash completion: {e}")))?
                    .into_bytes();
            }
            std::fs::write(path, script)?;
        }
    }
    Ok(())
}

/// Correct clap_complete's bash script for a binary name with a hyphen.
///
/// The script walks the words typed so far into a state named after the
/// binary and the subcommands, then completes from the `case` arm of that
/// state. clap_complete (up to 4.6.12, the newest; clap issue #6421, its
/// fixes #6423 and #6428 not merged) spells the walk's states with the
/// binary name's `-` as `__` (`phoenix__renew__subcmd__run`) but the arms
/// with `-` as `__subcmd__` (`phoenix__subcmd__renew__subcmd__run`): no
/// subcommand's arm ever matches, so `phoenix-renew run --<TAB>` completed
/// nothing. The arms are relabelled as the walk spells them. Then every
/// state the walk can reach must have an arm, else this fails: a later
/// clap_complete that spells them some other way is caught here, at build
/// time, not by an operator pressing TAB.
pub fn fix_bash_states(script: &str, name: &str) -> Result<String, String> {
    const ARM_INDENT: &str = "        ";
    let walk = format!("{}__subcmd__", name.replace('-', "__"));
    let arm = format!("{}__subcmd__", name.replace('-', "__subcmd__"));
    let mut fixed = String::with_capacity(script.len());
    for line in script.split_inclusive('\n') {
        let label = line
            .strip_prefix(ARM_INDENT)
            .and_then(|l| l.strip_suffix(")\n"))
            .filter(|l| !l.starts_with(' '));
        match label.and_then(|l| l.strip_prefix(&arm)) {
            Some(rest) if walk != arm => {
                fixed.push_str(&format!("{ARM_INDENT}{walk}{rest})\n"));
            }
            _ => fixed.push_str(line),
        }
    }
    let arms: Vec<&str> = fixed
        .lines()
        .filter_map(|l| l.strip_prefix(ARM_INDENT)?.strip_suffix(')'))
        .filter(|l| !l.starts_with(' '))
        .collect();
    let states: Vec<&str> = fixed
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("cmd=\"")?.strip_suffix('"'))
        .filter(|s| !s.is_empty())
        .collect();
    if states.is_empty() {
        return Err("no completion states found: the script's form changed".into());
    }
    match states.iter().find(|s| !arms.contains(s)) {
        Some(missing) => Err(format!("state '{missing}' has no case arm")),
        None => Ok(fixed),
    }
}
