//! Man pages and shell completions generated from the binaries' clap
//! definitions, so they never drift from `--help`. Shared by the
//! `gen-docs` example (used by scripts/build-deb.sh), tests/package.rs,
//! tests/cli_help.rs (the man pages) and tests/completion.rs.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use phoenix_hooks::{cli, exit};

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
        write_man_pages(&cmd, &man)?;
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

/// What a binary's man page says beyond its clap definition, in the
/// sections man-pages(7) names. Its exit statuses come from the library
/// (`cli::BINARIES`), where `--help` reads them too.
struct Extras {
    /// Paths and what they are.
    files: &'static [(&'static str, &'static str)],
    /// Variables beyond those of every binary ([`COMMON_ENVIRONMENT`]).
    environment: &'static [(&'static str, &'static str)],
    /// A command line and what it does.
    examples: &'static [(&'static str, &'static str)],
    /// Other pages, `name(section)`, beyond the other Phoenix binaries.
    see_also: &'static [&'static str],
}

const CONFIG_FILE: (&str, &str) = (
    "/etc/phoenix/toolkit.json",
    "The configuration (--config, $PHOENIX_CONFIG); every key is optional.",
);

const COMMON_ENVIRONMENT: &[(&str, &str)] = &[
    (
        "PHOENIX_CONFIG",
        "The configuration file, when --config is not given.",
    ),
    (
        "JOURNAL_STREAM",
        "Set by systemd to the device and inode of the journal stream it \
         connected. When stderr is that stream, each line starts with its \
         syslog priority (<3> error ... <7> debug); otherwise (a terminal, a \
         file, a pipe) lines are plain.",
    ),
];

fn extras(name: &str) -> Extras {
    match name {
        "phoenix-hook" => Extras {
            files: &[
                CONFIG_FILE,
                (
                    "/var/lib/vz/snippets/phoenix-hook",
                    "The hookscript Proxmox runs (a copy of \
                     /usr/share/phoenix-hooks/phoenix-hook).",
                ),
                (
                    "/usr/local/phoenix_hypervisor/etc/phoenix_lxc_configs.json",
                    "The containers and their bind mounts (under phoenix_etc).",
                ),
                (
                    "/usr/local/phoenix_hypervisor/etc/phoenix_vm_configs.json",
                    "The VMs (under phoenix_etc).",
                ),
                (
                    "/mnt/pve/quickOS/lxc-persistent-data/103/ssl",
                    "The CA state directory (ca.state_dir): ca.generation, \
                     ca.ready, the secrets checked at pre-start.",
                ),
            ],
            environment: &[],
            examples: &[
                (
                    "pct set 103 --hookscript local:snippets/phoenix-hook",
                    "Make it the CA container's hookscript (qm set for a VM).",
                ),
                (
                    "phoenix-hook 103 pre-start",
                    "What Proxmox runs before container 103 starts.",
                ),
                ("journalctl -t phoenix-hook", "Its lines in syslog."),
            ],
            see_also: &["pct(1)", "qm(1)"],
        },
        "phoenix-mount" => Extras {
            files: &[
                CONFIG_FILE,
                (
                    "/usr/lib/systemd/system-generators/phoenix-mount",
                    "The generator: systemd runs it at boot and at every \
                     daemon-reload.",
                ),
                (
                    "/etc/fstab",
                    "Read, never edited: a mount point it has is left to it.",
                ),
                (
                    "/etc/step-ca/ssl",
                    "The CA state directory in a guest (ca.guest_state_dir), \
                     mounted read-only.",
                ),
            ],
            environment: &[],
            examples: &[
                (
                    "systemctl daemon-reload",
                    "Run the generator: one .mount unit per volume.",
                ),
                (
                    "phoenix-mount check",
                    "One line per volume; exit 1 if one is not mounted as \
                     configured.",
                ),
                ("phoenix-mount apply", "Mount every volume now."),
                (
                    "phoenix-mount --vmid 1001 check",
                    "The volumes of VM 1001 in phoenix_vm_configs.json.",
                ),
            ],
            see_also: &["systemd.generator(7)", "systemd.mount(5)", "nfs(5)"],
        },
        "phoenix-ca" => Extras {
            files: &[
                CONFIG_FILE,
                (
                    "/mnt/pve/quickOS/lxc-persistent-data/103/ssl",
                    "The CA state directory on the Proxmox host (ca.state_dir).",
                ),
                (
                    "/etc/step-ca/ssl",
                    "The CA state directory elsewhere (ca.guest_state_dir).",
                ),
                (
                    "ca.generation, ca.ready",
                    "In the state directory: the CA container's current boot, \
                     and the readiness token of that boot.",
                ),
                (
                    "root_ca.fingerprint, phoenix_root_ca.crt",
                    "In the state directory: the root's SHA-256 fingerprint \
                     and certificate.",
                ),
                (
                    "public/",
                    "In the state directory: the same files without any \
                     secret, for dependents to mount.",
                ),
                (
                    "/usr/local/share/ca-certificates/phoenix-root-ca.crt",
                    "The root trusted system-wide by wait --bootstrap.",
                ),
            ],
            environment: &[],
            examples: &[
                (
                    "phoenix-ca wait --bootstrap",
                    "In a guest: wait for the CA, then trust its root \
                     (phoenix-ca-wait.service).",
                ),
                (
                    "phoenix-ca status --json",
                    "Generation, token, fingerprint and health, for scripts.",
                ),
                (
                    "phoenix-ca publish",
                    "In the CA container, after step-ca starts (ExecStartPost=).",
                ),
            ],
            see_also: &["update-ca-certificates(8)", "step-ca(1)"],
        },
        "phoenix-renew" => Extras {
            files: &[
                CONFIG_FILE,
                (
                    "/usr/local/phoenix_hypervisor/etc/certificate-manifest.json",
                    "The certificates to keep (toolkit.json manifest).",
                ),
                (
                    "/var/lib/phoenix/renew-state.json",
                    "Each certificate's last result and failure backoff \
                     (under state_dir).",
                ),
                (
                    "/run/lock/phoenix/renew.lock",
                    "Held by the running renewal (under lock_dir).",
                ),
            ],
            environment: &[],
            examples: &[
                (
                    "phoenix-renew run --dry-run",
                    "Print what would be issued or renewed; change nothing.",
                ),
                (
                    "phoenix-renew run --only NAME --force",
                    "Issue one certificate anew, ignoring its backoff.",
                ),
                (
                    "phoenix-renew status",
                    "Every certificate's expiry, next action and last result.",
                ),
                (
                    "systemctl enable --now phoenix-renew.timer",
                    "Renew hourly.",
                ),
            ],
            see_also: &["step(1)", "systemd.timer(5)"],
        },
        "phoenix-swarm" => Extras {
            files: &[
                CONFIG_FILE,
                (
                    "/usr/local/phoenix_hypervisor/etc/phoenix_vm_configs.json",
                    "The VMs: swarm_role, network_config.ip, node_labels.",
                ),
                (
                    "/run/lock/phoenix/swarm.lock",
                    "Held by the running ensure (under lock_dir).",
                ),
            ],
            environment: &[],
            examples: &[
                (
                    "phoenix-swarm ensure --dry-run",
                    "Read every VM's swarm state, print the commands that \
                     would change it.",
                ),
                (
                    "phoenix-swarm ensure --retry-for 10min",
                    "As phoenix-swarm.service runs it.",
                ),
                ("phoenix-swarm status --json", "Every VM's swarm state."),
            ],
            see_also: &["docker-swarm(1)", "qm(1)"],
        },
        "phoenix-deploy" => Extras {
            files: &[
                CONFIG_FILE,
                (
                    "/usr/local/phoenix_hypervisor/etc/phoenix_stacks_config.json",
                    "The stacks (deploy.stacks_config).",
                ),
                (
                    "/usr/local/phoenix_hypervisor/etc/phoenix_vm_configs.json",
                    "Which VM runs which stacks (docker_stacks).",
                ),
                (
                    "/var/lib/phoenix/deploy/",
                    "What was last deployed of each stack (under state_dir).",
                ),
                (
                    "/run/lock/phoenix/deploy.lock",
                    "Held by the running deployment (under lock_dir).",
                ),
            ],
            environment: &[],
            examples: &[
                (
                    "phoenix-deploy run --dry-run",
                    "Print each rendered compose and its diff; change nothing.",
                ),
                (
                    "phoenix-deploy run --only STACK",
                    "Deploy one stack if it changed.",
                ),
                (
                    "phoenix-deploy status",
                    "Each stack's services, last deployment and problems.",
                ),
            ],
            see_also: &["docker-stack(1)", "qm(1)"],
        },
        other => panic!("no man page extras for '{other}'"),
    }
}

/// Text for roff: backslashes and hyphens escaped (a `-` is a hyphen, not
/// the minus of an option, for man's search and copy), a line never taken
/// for a request.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    escaped
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A section of tagged paragraphs: the tag bold, then its text.
fn tagged_section(
    w: &mut dyn Write,
    title: &str,
    items: &[(impl AsRef<str>, impl AsRef<str>)],
) -> std::io::Result<()> {
    writeln!(w, ".SH \"{title}\"")?;
    for (tag, text) in items {
        writeln!(
            w,
            ".TP\n\\fB{}\\fR\n{}",
            roff(tag.as_ref()),
            roff(text.as_ref())
        )?;
    }
    Ok(())
}

/// The EXIT STATUS section of `about`'s binary.
fn exit_section(w: &mut dyn Write, about: &cli::LongAbout) -> std::io::Result<()> {
    let items: Vec<(String, String)> = about
        .exit
        .iter()
        .map(|d| (d.0.codes.to_string(), exit::describe(d)))
        .collect();
    tagged_section(w, "EXIT STATUS", &items)
}

fn see_also_section(w: &mut dyn Write, pages: &[String]) -> std::io::Result<()> {
    writeln!(w, ".SH \"SEE ALSO\"")?;
    let refs: Vec<String> = pages
        .iter()
        .map(|p| match p.split_once('(') {
            Some((name, section)) => format!("\\fB{}\\fR({section}", roff(name)),
            None => roff(p),
        })
        .collect();
    writeln!(w, "{}", refs.join(",\n"))
}

/// The man pages of the binary `cmd`: its own (the clap sections, then
/// EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES, SEE ALSO) and one per
/// subcommand (`phoenix-ca-wait.1`: the clap sections, EXIT STATUS, SEE
/// ALSO).
pub fn write_man_pages(cmd: &clap::Command, dir: &Path) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    let (_, about) = cli::BINARIES
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("{name} is not in cli::BINARIES"));
    let extras = extras(&name);
    // As clap_mangen::generate_to: built, so a subcommand's name is
    // `phoenix-ca wait` and its page `phoenix-ca-wait.1`.
    let mut cmd = cmd.clone().disable_help_subcommand(true);
    cmd.build();
    let subs: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    let sub_pages: Vec<String> = subs
        .iter()
        .map(|s| format!("{name}-{}(1)", s.get_name()))
        .collect();
    let others = cli::BINARIES
        .iter()
        .filter(|(n, _)| *n != name)
        .map(|(n, _)| format!("{n}(1)"));

    // The binary's page: DESCRIPTION without the exit statuses, which
    // have their section.
    let page = Man::new(cmd.clone().long_about(about.text));
    let mut w = Vec::new();
    clap_sections(&page, &cmd, &mut w)?;
    exit_section(&mut w, about)?;
    let env: Vec<(&str, &str)> = COMMON_ENVIRONMENT
        .iter()
        .chain(extras.environment)
        .copied()
        .collect();
    tagged_section(&mut w, "ENVIRONMENT", &env)?;
    tagged_section(&mut w, "FILES", extras.files)?;
    tagged_section(&mut w, "EXAMPLES", extras.examples)?;
    page.render_version_section(&mut w)?;
    let see_also: Vec<String> = sub_pages
        .iter()
        .cloned()
        .chain(others)
        .chain(extras.see_also.iter().map(|s| s.to_string()))
        .collect();
    see_also_section(&mut w, &see_also)?;
    std::fs::write(dir.join(page.get_filename()), w)?;

    for sub in subs {
        let page = Man::new(sub.clone());
        let mut w = Vec::new();
        clap_sections(&page, &sub, &mut w)?;
        exit_section(&mut w, about)?;
        let mut see_also = vec![format!("{name}(1)")];
        let own = format!("{name}-{}(1)", sub.get_name());
        see_also.extend(sub_pages.iter().filter(|p| **p != own).cloned());
        see_also_section(&mut w, &see_also)?;
        std::fs::write(dir.join(page.get_filename()), w)?;
    }
    Ok(())
}

/// What clap_mangen renders from the clap definition, up to the sections
/// added here.
fn clap_sections(page: &Man, cmd: &clap::Command, w: &mut dyn Write) -> std::io::Result<()> {
    page.render_title(w)?;
    page.render_name_section(w)?;
    page.render_synopsis_section(w)?;
    page.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        page.render_options_section(w)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        page.render_subcommands_section(w)?;
    }
    Ok(())
}
