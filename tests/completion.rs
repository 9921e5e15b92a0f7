//! The generated bash completions work in bash: sourced, each binary's
//! completion function is registered, and called as bash calls it
//! (`COMP_WORDS`, `COMP_CWORD`, the command, the current and the previous
//! word) it offers every subcommand's own options after that subcommand,
//! which clap_complete's script for a hyphenated name did not (clap issue
//! #6421; see examples/gen-docs/docs.rs).

#[path = "../examples/gen-docs/docs.rs"]
mod docs;

use std::path::Path;
use std::process::Command;

/// What bash offers for `words` (the last one being completed), from the
/// script at `script`, through the function `complete -p` names.
fn complete(script: &Path, words: &[&str]) -> Vec<String> {
    const DRIVER: &str = r#"
        source "$1" || exit 90
        spec=$(complete -p "$3") || exit 91
        fn=${spec##*-F }
        fn=${fn%% *}
        [[ $(type -t "$fn") == function ]] || exit 92
        shift 2
        COMP_WORDS=("$@")
        COMP_CWORD=$(( $# - 1 ))
        COMP_LINE="$*"
        COMP_POINT=${#COMP_LINE}
        COMPREPLY=()
        "$fn" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", DRIVER, "driver"])
        .arg(script)
        .arg("unused")
        .args(words)
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "{words:?}: bash exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn generated() -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    docs::write_all(out.path()).unwrap();
    out
}

fn has_all(got: &[String], want: &[&str], words: &[&str]) {
    for w in want {
        assert!(got.iter().any(|g| g == w), "{words:?}: no {w} in {got:?}");
    }
}

#[test]
fn options_complete_after_a_subcommand() {
    let out = generated();
    let bash = out.path().join("completions/bash");
    for (words, want) in [
        (
            &["phoenix-renew", "run", "--"][..],
            &["--dry-run", "--only", "--force", "--retry-for", "--config"][..],
        ),
        (&["phoenix-renew", "status", "--j"], &["--json"]),
        (&["phoenix-swarm", "status", "--"], &["--json", "--verbose"]),
        (
            &["phoenix-swarm", "ensure", "--"],
            &["--dry-run", "--repair"],
        ),
        (&["phoenix-ca", "wait", "--"], &["--bootstrap", "--timeout"]),
        (&["phoenix-mount", "check", "--"], &["--json"]),
        (&["phoenix-deploy", "run", "--"], &["--dry-run", "--only"]),
        (&["phoenix-hook", "--"], &["--config", "--help"]),
        (&["phoenix-renew", ""], &["run", "status"]),
    ] {
        let got = complete(&bash.join(words[0]), words);
        has_all(&got, want, words);
    }
    // The prefix typed is respected: only what starts with it.
    let words = ["phoenix-renew", "run", "--dry"];
    assert_eq!(
        complete(&bash.join("phoenix-renew"), &words),
        ["--dry-run"],
        "{words:?}"
    );
}

/// Every subcommand of every binary offers all its own long options, as
/// its clap definition has them.
#[test]
fn every_subcommand_completes_its_options() {
    let out = generated();
    let mut checked = 0;
    for mut cmd in docs::commands() {
        cmd.build();
        let name = cmd.get_name().to_string();
        let script = out.path().join("completions/bash").join(&name);
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let longs: Vec<String> = sub
                .get_arguments()
                .filter(|a| !a.is_hide_set())
                .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
                .collect();
            let want: Vec<&str> = longs.iter().map(String::as_str).collect();
            assert!(!want.is_empty(), "{name} {}", sub.get_name());
            let words = [name.as_str(), sub.get_name(), "--"];
            has_all(&complete(&script, &words), &want, &words);
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} subcommands");
}

#[test]
fn the_relabelling_leaves_a_correct_script_alone() {
    // What a fixed clap_complete would write: the arms spelled as the walk.
    let fixed = "    cmd=\"\"\n    for i in x\n    do\n        case \"${cmd},${i}\" in\n\
                 \x20           \",$1\")\n                cmd=\"my__app\"\n                ;;\n\
                 \x20           my__app,run)\n                cmd=\"my__app__subcmd__run\"\n\
                 \x20               ;;\n        esac\n    done\n    case \"${cmd}\" in\n\
                 \x20       my__app)\n            ;;\n        my__app__subcmd__run)\n            ;;\n";
    assert_eq!(docs::fix_bash_states(fixed, "my-app").unwrap(), fixed);
    let broken = fixed.replace(
        "        my__app__subcmd__run)",
        "        my__subcmd__app__subcmd__run)",
    );
    assert_eq!(docs::fix_bash_states(&broken, "my-app").unwrap(), fixed);
    // A state with no arm at all is an error, not a silent script.
    let lost = fixed.replace("        my__app__subcmd__run)", "        other)");
    let e = docs::fix_bash_states(&lost, "my-app").unwrap_err();
    assert!(e.contains("my__app__subcmd__run"), "{e}");
}
