//! The invariant checker of the race harness (tests/race.rs): a log of
//! timestamped events from one iteration in, the violations out. Pure, so
//! that its own tests below can feed it logs that break each invariant.
//! The worlds the harness races in live in [`world`].
#![allow(dead_code)]

pub mod world;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds of the real-time clock (the step wrapper's `date` uses it).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Who waited for the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `phoenix-ca wait` of the current generation.
    Waiter,
    /// A gated dependent's `phoenix-hook <id> pre-start` (token and health).
    Dependent,
    /// A waiter of the previous generation, run to its end before the CA's
    /// new pre-start: the old token was published and must satisfy it.
    Previous,
}

/// What happened, when (µs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The CA (as the dependents' health check reaches it) came up; absent
    /// when it was up all along.
    CaUp(u64),
    /// The publisher was started (the token can exist from now on).
    PublishStart(u64),
    /// A waiter returned: its id, role, exit code, when; `bound`: its
    /// timeout (µs) and when it started.
    WaiterEnd {
        id: usize,
        role: Role,
        code: i32,
        at: u64,
        started: u64,
        bound: u64,
    },
    /// A renewal run did its work (step calls) from `from` to `to`.
    RenewWork { run: String, from: u64, to: u64 },
    /// A certificate was issued or renewed at `at` (a step call that
    /// succeeded).
    Issued { at: u64 },
    /// A reader saw the certificate files: `ok` false when the cert did not
    /// parse or did not match the key.
    Read { ok: bool, what: String },
    /// A step of the scenario failed that must not (a pre-start, a
    /// renewal run): what, and how.
    Failed(String),
}

/// Counts of what one or more iterations checked, and what broke.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub waiters: usize,
    pub dependents: usize,
    pub previous: usize,
    pub renew_runs: usize,
    pub issued: usize,
    pub reads: usize,
    pub violations: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, o: Tally) {
        self.waiters += o.waiters;
        self.dependents += o.dependents;
        self.previous += o.previous;
        self.renew_runs += o.renew_runs;
        self.issued += o.issued;
        self.reads += o.reads;
        self.violations.extend(o.violations);
    }
}

/// Check the four invariants over one iteration's events.
pub fn check(events: &[Event]) -> Tally {
    let mut t = Tally::default();
    let publish = events.iter().find_map(|e| match e {
        Event::PublishStart(at) => Some(*at),
        _ => None,
    });
    let ca_up = events.iter().find_map(|e| match e {
        Event::CaUp(at) => Some(*at),
        _ => None,
    });
    let mut work: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for e in events {
        match e {
            Event::WaiterEnd {
                id,
                role,
                code,
                at,
                started,
                bound,
            } => {
                let who = match role {
                    Role::Waiter => "waiter",
                    Role::Dependent => "dependent",
                    Role::Previous => "previous-generation waiter",
                };
                match role {
                    Role::Waiter => t.waiters += 1,
                    Role::Dependent => t.dependents += 1,
                    Role::Previous => t.previous += 1,
                }
                // 1. never before the current generation is published (a
                // waiter of the previous generation had its publish)...
                if *role != Role::Previous && *code == 0 && publish.is_none_or(|p| *at < p) {
                    t.violations.push(format!(
                        "{who} {id} returned at {at} before the publish ({publish:?})"
                    ));
                }
                // ...and a dependent never before the CA is healthy.
                if *role == Role::Dependent && *code == 0 && ca_up.is_some_and(|u| *at < u) {
                    t.violations.push(format!(
                        "{who} {id} returned at {at} before the CA was up ({ca_up:?})"
                    ));
                }
                // ...and always within its bound (plus process start-up).
                if *code != 0 || at.saturating_sub(*started) > bound + 2_000_000 {
                    t.violations.push(format!(
                        "{who} {id} exited {code} after {} ms (bound {} ms)",
                        at.saturating_sub(*started) / 1000,
                        bound / 1000
                    ));
                }
            }
            Event::RenewWork { run, from, to } => {
                t.renew_runs += 1;
                let w = work.entry(run).or_insert((*from, *to));
                w.0 = w.0.min(*from);
                w.1 = w.1.max(*to);
            }
            Event::Issued { at } => {
                t.issued += 1;
                // 4. nothing issued before the CA is ready.
                if publish.is_none_or(|p| *at < p) {
                    t.violations.push(format!(
                        "certificate issued at {at} before the CA was ready ({publish:?})"
                    ));
                }
            }
            Event::Read { ok, what } => {
                t.reads += 1;
                // 3. never a partial file or a cert that is not its key's.
                if !ok {
                    t.violations.push(format!("reader saw {what}"));
                }
            }
            Event::Failed(what) => t.violations.push(what.clone()),
            Event::PublishStart(_) | Event::CaUp(_) => {}
        }
    }
    // 2. two renewals never overlap.
    let spans: Vec<(&str, (u64, u64))> = work.into_iter().collect();
    for (i, (a, sa)) in spans.iter().enumerate() {
        for (b, sb) in &spans[i + 1..] {
            if sa.0 < sb.1 && sb.0 < sa.1 {
                t.violations
                    .push(format!("renewals {a} {sa:?} and {b} {sb:?} overlap"));
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(at: u64) -> Event {
        ended(Role::Waiter, at)
    }

    fn ended(role: Role, at: u64) -> Event {
        Event::WaiterEnd {
            id: 1,
            role,
            code: 0,
            at,
            started: 0,
            bound: 10_000_000,
        }
    }

    #[test]
    fn a_clean_log_has_no_violation() {
        let t = check(&[
            // The previous generation's waiter returned before this publish.
            ended(Role::Previous, 20),
            Event::PublishStart(100),
            waiter(150),
            ended(Role::Dependent, 180),
            Event::RenewWork {
                run: "a".into(),
                from: 200,
                to: 300,
            },
            Event::RenewWork {
                run: "b".into(),
                from: 300,
                to: 400,
            },
            Event::Issued { at: 250 },
            Event::Read {
                ok: true,
                what: String::new(),
            },
        ]);
        assert!(t.violations.is_empty(), "{:?}", t.violations);
        assert_eq!((t.waiters, t.renew_runs, t.issued, t.reads), (1, 2, 1, 1));
        assert_eq!((t.dependents, t.previous), (1, 1));
    }

    #[test]
    fn each_invariant_can_fail() {
        // 1: a waiter returned before the publish, one timed out, one
        // returned with no publish at all.
        assert_eq!(
            check(&[waiter(50), Event::PublishStart(100)])
                .violations
                .len(),
            1
        );
        assert_eq!(check(&[waiter(50)]).violations.len(), 1);
        let late = Event::WaiterEnd {
            id: 2,
            role: Role::Waiter,
            code: 124,
            at: 20_000_000,
            started: 0,
            bound: 10_000_000,
        };
        assert_eq!(check(&[Event::PublishStart(1), late]).violations.len(), 1);
        // 1, for a gated dependent: its pre-start exited 0 before the
        // publish, or with no publish; or it gave up (124).
        let v = check(&[ended(Role::Dependent, 50), Event::PublishStart(100)]);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].starts_with("dependent 1 returned"));
        assert_eq!(check(&[ended(Role::Dependent, 50)]).violations.len(), 1);
        // ...or after the publish but before the CA answered.
        let v = check(&[
            Event::PublishStart(10),
            ended(Role::Dependent, 50),
            Event::CaUp(100),
        ]);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].contains("before the CA was up"));
        // (A waiter without health checks does not care.)
        assert!(
            check(&[Event::PublishStart(10), waiter(50), Event::CaUp(100)])
                .violations
                .is_empty()
        );
        let gave_up = Event::WaiterEnd {
            id: 3,
            role: Role::Dependent,
            code: 124,
            at: 3_000_000,
            started: 0,
            bound: 12_000_000,
        };
        assert_eq!(
            check(&[Event::PublishStart(1), gave_up]).violations.len(),
            1
        );
        // 1, across a restart: a waiter of the previous generation that did
        // not accept the published token.
        let refused = Event::WaiterEnd {
            id: 4,
            role: Role::Previous,
            code: 124,
            at: 11_000_000,
            started: 0,
            bound: 10_000_000,
        };
        assert_eq!(
            check(&[refused, Event::PublishStart(20_000_000)])
                .violations
                .len(),
            1
        );
        // 2: overlapping renewal work.
        let v = check(&[
            Event::RenewWork {
                run: "a".into(),
                from: 200,
                to: 300,
            },
            Event::RenewWork {
                run: "b".into(),
                from: 299,
                to: 400,
            },
        ]);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        // 3: a torn read.
        let v = check(&[Event::Read {
            ok: false,
            what: "a partial cert".into(),
        }]);
        assert_eq!(v.violations.len(), 1);
        // 4: an issue before the CA was ready.
        let v = check(&[Event::Issued { at: 10 }, Event::PublishStart(100)]);
        assert_eq!(v.violations.len(), 1);
    }
}
