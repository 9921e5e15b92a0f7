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
            let mut f = std::fs::File::create(path)?;
            clap_complete::generate(shell, &mut cmd.clone(), name, &mut f);
        }
    }
    Ok(())
}
