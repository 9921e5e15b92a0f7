//! The invariant checker of the race harness (tests/race.rs): a log of
//! timestamped events from one iteration in, the violations out, each
//! named by the invariant it breaks. Pure, so that its own tests below
//! can check the arithmetic on hand-made logs; whether the harness would
//! see a real bug is shown by tests/race.rs running broken variants
//! ([`Variant`]). The worlds the harness races in live in [`world`] (the
//! CA guest and its dependents) and [`renewal`] (certificates, the sync).
#![allow(dead_code)]

pub mod renewal;
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

/// What the harness claims, one per kind of violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// 1. No waiter or gated dependent returns before the readiness token
    ///    of the current generation is in place (a dependent nor before
    ///    the CA answers), and every one returns within its bound.
    Ready,
    /// 2. Two renewals never overlap.
    Exclusive,
    /// 3. A reader never sees a partial file, nor a certificate whose key
    ///    is not in place yet; the pair left in place matches.
    Whole,
    /// 4. Nothing is issued or renewed before the token is in place; a
    ///    run that says the CA is not ready asked the CA nothing.
    IssuedWhenReady,
    /// 5. The sync's renewal starts only after its swarm step succeeded.
    SwarmFirst,
    /// 6. The sync's deployment starts only after its renewal succeeded.
    DeployAfter,
    /// Something failed that no invariant names (an exit code, a
    /// pre-start): reported, never expected.
    Failed,
}

impl Invariant {
    pub const ALL: [Invariant; 7] = [
        Invariant::Ready,
        Invariant::Exclusive,
        Invariant::Whole,
        Invariant::IssuedWhenReady,
        Invariant::SwarmFirst,
        Invariant::DeployAfter,
        Invariant::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Invariant::Ready => "ready",
            Invariant::Exclusive => "exclusive",
            Invariant::Whole => "whole",
            Invariant::IssuedWhenReady => "issued_when_ready",
            Invariant::SwarmFirst => "swarm_first",
            Invariant::DeployAfter => "deploy_after",
            Invariant::Failed => "failed",
        }
    }
}

/// The harness as shipped, or one deliberately broken part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The real binaries, ordered as the units order them.
    Product,
    /// The old bash wait, `while [ ! -f ca.ready ]`, in place of
    /// `phoenix-ca wait`; and renewals against a CA state with no
    /// generation, whose readiness check then takes any token from a CA
    /// that answers (the compatibility rule).
    StaleWaiter,
    /// Every renewal with its own `lock_dir`: no mutual exclusion.
    NoLock,
    /// The pair reaches the place the reader reads by a shell stand-in of
    /// the old install: `cp` of the certificate, then of the key, in place.
    TornInstall,
    /// The sync's swarm, renewal and deployment started at once rather
    /// than each after the one before.
    Unordered,
}

impl Variant {
    pub const MUTANTS: [Variant; 4] = [
        Variant::StaleWaiter,
        Variant::NoLock,
        Variant::TornInstall,
        Variant::Unordered,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Product => "product",
            Variant::StaleWaiter => "stale-waiter",
            Variant::NoLock => "no-lock",
            Variant::TornInstall => "torn-install",
            Variant::Unordered => "unordered",
        }
    }

    /// The invariants this mutant must be caught by.
    pub fn caught_by(self) -> &'static [Invariant] {
        match self {
            Variant::Product => &[],
            Variant::StaleWaiter => &[Invariant::Ready, Invariant::IssuedWhenReady],
            Variant::NoLock => &[Invariant::Exclusive],
            Variant::TornInstall => &[Invariant::Whole],
            Variant::Unordered => &[Invariant::SwarmFirst, Invariant::DeployAfter],
        }
    }
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

/// What the reader made of the pair at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Both files whole, the certificate its key's.
    Whole,
    /// A file that does not parse: written in place, seen half-way.
    Partial(String),
    /// The new key beside the old certificate, until the certificate
    /// followed (`us`): the instant between the install's two renames.
    KeyAhead { us: u64 },
    /// A new certificate beside the old key, until the key followed.
    CertAhead { us: u64 },
    /// Torn, then both files changed before the reader looked again.
    Inconclusive,
}

/// The sync's steps, in the order phoenix-sync.target runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStep {
    Swarm,
    Renew,
    Deploy,
}

/// What happened, when (µs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The CA (as the dependents' health check reaches it) came up; absent
    /// when it was up all along.
    CaUp(u64),
    /// The token of the current generation came into place after `after`
    /// (a read that began then found none) and by `by` (a read found it).
    TokenInPlace {
        after: u64,
        by: u64,
    },
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
    /// One `step` call of a renewal run (`run`: the pid of its
    /// `phoenix-renew`), from the step wrapper's log.
    StepCall {
        run: String,
        from: u64,
        to: u64,
        rc: i32,
        verb: String,
    },
    /// One `phoenix-renew run` ended; `not_ready`: it said the CA is not
    /// ready.
    RenewRun {
        pid: String,
        code: i32,
        not_ready: bool,
    },
    /// How many times a reader polling the pair looked at it.
    Looks(usize),
    /// A pair the reader saw (each once, judged).
    Read(Seen),
    /// The pair in place after the iteration's renewals: `Err` says why
    /// it is not a matching pair.
    Settled(Result<(), String>),
    /// A step of the sync, from its start to its end, and its exit code.
    Sync {
        step: SyncStep,
        from: u64,
        to: u64,
        code: i32,
    },
    Failed(String),
}

/// Counts of what one or more iterations checked, and what broke.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub waiters: usize,
    pub dependents: usize,
    pub previous: usize,
    pub renew_runs: usize,
    pub not_ready: usize,
    pub step_calls: usize,
    /// `step ca certificate`: a new key.
    pub issued: usize,
    /// `step ca renew`: the same key.
    pub renewed: usize,
    pub reads: usize,
    /// Distinct pairs the reader saw.
    pub pairs: usize,
    /// How long each new key seen beside the old certificate stood there
    /// until the certificate followed (µs, to within a look).
    pub key_ahead_us: Vec<u64>,
    pub inconclusive: usize,
    /// Violations of 3 by kind: partial files, certificates before keys.
    pub partial: usize,
    pub cert_ahead: usize,
    pub syncs: usize,
    pub violations: Vec<(Invariant, String)>,
}

impl Tally {
    pub fn add(&mut self, o: Tally) {
        self.waiters += o.waiters;
        self.dependents += o.dependents;
        self.previous += o.previous;
        self.renew_runs += o.renew_runs;
        self.not_ready += o.not_ready;
        self.step_calls += o.step_calls;
        self.issued += o.issued;
        self.renewed += o.renewed;
        self.reads += o.reads;
        self.pairs += o.pairs;
        self.key_ahead_us.extend(o.key_ahead_us);
        self.inconclusive += o.inconclusive;
        self.partial += o.partial;
        self.cert_ahead += o.cert_ahead;
        self.syncs += o.syncs;
        self.violations.extend(o.violations);
    }

    /// Violations of `inv`.
    pub fn count(&self, inv: Invariant) -> usize {
        self.violations.iter().filter(|(i, _)| *i == inv).count()
    }

    /// `N (p50 X µs, max Y µs)` of [`Tally::key_ahead_us`].
    pub fn key_ahead(&self) -> String {
        let mut us = self.key_ahead_us.clone();
        us.sort_unstable();
        match (us.get(us.len() / 2), us.last()) {
            (Some(p50), Some(max)) => format!("{} (p50 {p50} µs, max {max} µs)", us.len()),
            _ => "0".into(),
        }
    }

    /// `ready=0 exclusive=0 ...`
    pub fn per_invariant(&self) -> String {
        Invariant::ALL
            .iter()
            .map(|i| format!("{}={}", i.name(), self.count(*i)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn violate(&mut self, inv: Invariant, what: String) {
        self.violations.push((inv, what));
    }
}

fn is_issuance(verb: &str) -> bool {
    verb == "ca certificate" || verb == "ca renew"
}

/// Check every invariant over one iteration's events.
pub fn check(events: &[Event]) -> Tally {
    let mut t = Tally::default();
    // The token's arrival: a waiter or a step call at or before `after`
    // came before it for certain (the read that began at `after` found
    // none).
    let token = events.iter().find_map(|e| match e {
        Event::TokenInPlace { after, by } => Some((*after, *by)),
        _ => None,
    });
    let before_token = |at: u64| token.is_none_or(|(after, _)| at <= after);
    let token_s = match token {
        Some((after, by)) => format!("the token came after {after}, by {by}"),
        None => "no token came".into(),
    };
    let ca_up = events.iter().find_map(|e| match e {
        Event::CaUp(at) => Some(*at),
        _ => None,
    });
    let sync = |step: SyncStep| {
        events.iter().find_map(|e| match e {
            Event::Sync {
                step: s,
                from,
                to,
                code,
            } if *s == step => Some((*from, *to, *code)),
            _ => None,
        })
    };
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
                // 1. never before the current generation's token is in
                // place (a waiter of the previous generation had its own)...
                if *role != Role::Previous && *code == 0 && before_token(*at) {
                    t.violate(
                        Invariant::Ready,
                        format!("{who} {id} returned at {at}: {token_s}"),
                    );
                }
                // ...and a dependent never before the CA is healthy.
                if *role == Role::Dependent && *code == 0 && ca_up.is_some_and(|u| *at < u) {
                    t.violate(
                        Invariant::Ready,
                        format!("{who} {id} returned at {at} before the CA was up ({ca_up:?})"),
                    );
                }
                // ...and always within its bound (plus process start-up).
                if *code != 0 || at.saturating_sub(*started) > bound + 2_000_000 {
                    t.violate(
                        Invariant::Ready,
                        format!(
                            "{who} {id} exited {code} after {} ms (bound {} ms)",
                            at.saturating_sub(*started) / 1000,
                            bound / 1000
                        ),
                    );
                }
            }
            Event::StepCall {
                run,
                from,
                to,
                verb,
                ..
            } => {
                t.step_calls += 1;
                let w = work.entry(run).or_insert((*from, *to));
                w.0 = w.0.min(*from);
                w.1 = w.1.max(*to);
                match verb.as_str() {
                    "ca certificate" => t.issued += 1,
                    "ca renew" => t.renewed += 1,
                    _ => {}
                }
                // 4. nothing issued or renewed before the CA is ready.
                if is_issuance(verb) && before_token(*from) {
                    t.violate(
                        Invariant::IssuedWhenReady,
                        format!("step {verb} began at {from}: {token_s}"),
                    );
                }
            }
            Event::RenewRun {
                pid,
                code,
                not_ready,
            } => {
                t.renew_runs += 1;
                if *not_ready {
                    t.not_ready += 1;
                    let asked = events.iter().any(|e| {
                        matches!(e, Event::StepCall { run, verb, .. }
                                 if run == pid && is_issuance(verb))
                    });
                    if asked {
                        t.violate(
                            Invariant::IssuedWhenReady,
                            format!("run {pid} said the CA is not ready (exit {code}) after asking it for a certificate"),
                        );
                    }
                }
            }
            Event::Looks(n) => t.reads += n,
            Event::Read(seen) => {
                t.pairs += 1;
                // 3. never a partial file, never a certificate before its key.
                match seen {
                    Seen::Whole => {}
                    Seen::KeyAhead { us } => {
                        t.key_ahead_us.push(*us);
                    }
                    Seen::Inconclusive => t.inconclusive += 1,
                    Seen::Partial(what) => {
                        t.partial += 1;
                        t.violate(Invariant::Whole, format!("reader saw {what}"))
                    }
                    Seen::CertAhead { us } => {
                        t.cert_ahead += 1;
                        t.violate(
                            Invariant::Whole,
                            format!(
                                "reader saw a certificate whose key was not in place for {us} µs"
                            ),
                        )
                    }
                }
            }
            Event::Settled(Err(why)) => {
                t.violate(Invariant::Whole, format!("left in place: {why}"))
            }
            Event::Sync { step, from, .. } => {
                t.syncs += usize::from(*step == SyncStep::Swarm);
                // 5. the renewal after the swarm; 6. the deployment after
                // the renewal, each only if the one before succeeded.
                let (before, inv) = match step {
                    SyncStep::Swarm => continue,
                    SyncStep::Renew => (SyncStep::Swarm, Invariant::SwarmFirst),
                    SyncStep::Deploy => (SyncStep::Renew, Invariant::DeployAfter),
                };
                match sync(before) {
                    Some((_, to, 0)) if to <= *from => {}
                    Some((_, to, code)) => t.violate(
                        inv,
                        format!("{step:?} began at {from}; {before:?} ended at {to} with {code}"),
                    ),
                    None => t.violate(inv, format!("{step:?} began at {from} with no {before:?}")),
                }
            }
            Event::Failed(what) => t.violate(Invariant::Failed, what.clone()),
            Event::TokenInPlace { .. } | Event::CaUp(_) | Event::Settled(Ok(())) => {}
        }
    }
    // 2. two renewals never overlap.
    let spans: Vec<(&str, (u64, u64))> = work.into_iter().collect();
    for (i, (a, sa)) in spans.iter().enumerate() {
        for (b, sb) in &spans[i + 1..] {
            if sa.0 < sb.1 && sb.0 < sa.1 {
                t.violate(
                    Invariant::Exclusive,
                    format!("renewals {a} {sa:?} and {b} {sb:?} overlap"),
                );
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

    fn token(after: u64) -> Event {
        Event::TokenInPlace {
            after,
            by: after + 10,
        }
    }

    fn call(run: &str, from: u64, to: u64, verb: &str) -> Event {
        Event::StepCall {
            run: run.into(),
            from,
            to,
            rc: 0,
            verb: verb.into(),
        }
    }

    fn sync(step: SyncStep, from: u64, to: u64, code: i32) -> Event {
        Event::Sync {
            step,
            from,
            to,
            code,
        }
    }

    fn only(events: &[Event]) -> Vec<Invariant> {
        check(events).violations.into_iter().map(|v| v.0).collect()
    }

    #[test]
    fn a_clean_log_has_no_violation() {
        let t = check(&[
            // The previous generation's waiter returned before this publish.
            ended(Role::Previous, 20),
            token(100),
            waiter(150),
            ended(Role::Dependent, 180),
            sync(SyncStep::Swarm, 90, 120, 0),
            sync(SyncStep::Renew, 120, 400, 0),
            sync(SyncStep::Deploy, 400, 450, 0),
            call("a", 200, 300, "ca certificate"),
            call("b", 300, 400, "ca renew"),
            Event::RenewRun {
                pid: "c".into(),
                code: 75,
                not_ready: true,
            },
            Event::Looks(5),
            Event::Read(Seen::Whole),
            Event::Read(Seen::KeyAhead { us: 3 }),
            Event::Settled(Ok(())),
        ]);
        assert!(t.violations.is_empty(), "{:?}", t.violations);
        assert_eq!((t.waiters, t.dependents, t.previous), (1, 1, 1));
        assert_eq!((t.step_calls, t.issued, t.renewed), (2, 1, 1));
        assert_eq!((t.renew_runs, t.not_ready, t.syncs), (1, 1, 1));
        assert_eq!((t.reads, t.pairs, t.key_ahead_us), (5, 2, vec![3]));
    }

    /// The arithmetic of each invariant on hand-made logs. (That the
    /// harness sees a real bug is tests/race.rs's mutation self-test.)
    #[test]
    fn the_checker_counts_each_invariant() {
        use Invariant::*;
        // 1: a waiter returned before the token, or with no token at all;
        // one timed out.
        assert_eq!(only(&[waiter(50), token(100)]), [Ready]);
        assert_eq!(only(&[waiter(100), token(100)]), [Ready]);
        assert_eq!(only(&[waiter(50)]), [Ready]);
        let late = Event::WaiterEnd {
            id: 2,
            role: Role::Waiter,
            code: 124,
            at: 20_000_000,
            started: 0,
            bound: 10_000_000,
        };
        assert_eq!(only(&[token(1), late]), [Ready]);
        // ...a dependent before the token, or before the CA answered.
        assert_eq!(only(&[ended(Role::Dependent, 50), token(100)]), [Ready]);
        assert_eq!(
            only(&[token(10), ended(Role::Dependent, 50), Event::CaUp(100)]),
            [Ready]
        );
        // (A waiter without health checks does not care.)
        assert!(only(&[token(10), waiter(50), Event::CaUp(100)]).is_empty());
        // 2: overlapping step calls of two runs.
        assert_eq!(
            only(&[
                token(1),
                call("a", 200, 300, "ca certificate"),
                call("b", 299, 400, "ca certificate")
            ]),
            [Exclusive]
        );
        // 3: a partial file, a certificate before its key, a torn pair
        // left in place; a key before its certificate is counted, not a
        // violation.
        assert_eq!(only(&[Event::Read(Seen::Partial("x".into()))]), [Whole]);
        assert_eq!(only(&[Event::Read(Seen::CertAhead { us: 900 })]), [Whole]);
        assert_eq!(only(&[Event::Settled(Err("torn".into()))]), [Whole]);
        // 4: a step call before the token; a run refused for an unready
        // CA that asked it anyway.
        assert_eq!(
            only(&[call("a", 10, 20, "ca renew"), token(100)]),
            [IssuedWhenReady]
        );
        assert!(only(&[call("a", 10, 20, "ca health"), token(100)]).is_empty());
        let refused = Event::RenewRun {
            pid: "a".into(),
            code: 75,
            not_ready: true,
        };
        assert_eq!(
            only(&[token(1), call("a", 10, 20, "ca certificate"), refused]),
            [IssuedWhenReady]
        );
        // 5: the renewal before the swarm ended, after a failed swarm, or
        // with none; 6: the deployment likewise after the renewal.
        let swarm = sync(SyncStep::Swarm, 0, 100, 0);
        assert_eq!(
            only(&[swarm.clone(), sync(SyncStep::Renew, 50, 200, 0)]),
            [SwarmFirst]
        );
        assert_eq!(
            only(&[
                sync(SyncStep::Swarm, 0, 100, 1),
                sync(SyncStep::Renew, 150, 200, 0)
            ]),
            [SwarmFirst]
        );
        assert_eq!(only(&[sync(SyncStep::Renew, 150, 200, 0)]), [SwarmFirst]);
        let renew = sync(SyncStep::Renew, 100, 200, 0);
        assert_eq!(
            only(&[
                swarm.clone(),
                renew.clone(),
                sync(SyncStep::Deploy, 150, 300, 0)
            ]),
            [DeployAfter]
        );
        assert_eq!(
            only(&[
                swarm,
                sync(SyncStep::Renew, 100, 200, 75),
                sync(SyncStep::Deploy, 250, 300, 0)
            ]),
            [DeployAfter]
        );
        // Anything else that failed.
        assert_eq!(only(&[Event::Failed("x".into())]), [Failed]);
    }
}
