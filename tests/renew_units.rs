//! The renewal units say what the issue asks: oneshot, exit codes 1 and 2
//! final; an hourly, randomized, persistent timer. (`systemd-analyze
//! verify` of every unit is tests/units.rs.)

fn unit(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("units")
            .join(name),
    )
    .unwrap()
}

#[test]
fn renew_units_say_what_the_issue_asks() {
    // systemd-analyze verify of these units is done by tests/units.rs,
    // with every other unit of units/.
    let service = unit("phoenix-renew.service");
    let timer = unit("phoenix-renew.timer");
    // A temporary failure is retried inside the start job (the sync
    // waits for it: docs/swarm.md), for up to 15 minutes.
    assert!(service.contains("ExecStart=/usr/bin/phoenix-renew run --retry-for 15min\n"));
    for line in ["Type=oneshot", "RestartPreventExitStatus=1 2"] {
        assert!(service.lines().any(|l| l == line), "service lacks {line}");
    }
    for line in ["OnCalendar=hourly", "Persistent=true"] {
        assert!(timer.lines().any(|l| l == line), "timer lacks {line}");
    }
    assert!(timer.lines().any(|l| l.starts_with("RandomizedDelaySec=")));
}
