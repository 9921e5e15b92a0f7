//! The renewal units pass `systemd-analyze verify` with no output at all,
//! with ExecStart= pointed at the built binary, and say what the issue asks
//! (oneshot; hourly, randomized, persistent timer; exit codes 1 and 2 final).

use std::process::Command;

fn unit(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("units")
            .join(name),
    )
    .unwrap()
}

#[test]
fn renew_units_verify_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let service = unit("phoenix-renew.service");
    let timer = unit("phoenix-renew.timer");
    assert!(service.contains("ExecStart=/usr/bin/phoenix-renew run\n"));
    std::fs::write(
        dir.path().join("phoenix-renew.service"),
        service.replace(
            "/usr/bin/phoenix-renew",
            env!("CARGO_BIN_EXE_phoenix-renew"),
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("phoenix-renew.timer"), &timer).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("phoenix-renew.service"))
        .arg(dir.path().join("phoenix-renew.timer"))
        .output()
        .expect("systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );

    for line in ["Type=oneshot", "RestartPreventExitStatus=1 2"] {
        assert!(service.lines().any(|l| l == line), "service lacks {line}");
    }
    for line in ["OnCalendar=hourly", "Persistent=true"] {
        assert!(timer.lines().any(|l| l == line), "timer lacks {line}");
    }
    assert!(timer.lines().any(|l| l.starts_with("RandomizedDelaySec=")));
}
