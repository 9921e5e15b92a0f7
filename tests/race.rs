//! The ordering proof: the real binaries raced against each other with
//! random delays (the arrival order is unknown, as at boot), many times,
//! with six invariants checked on every iteration (tests/race_support):
//!
//! 1. no waiter returns before the token of the current generation is in
//!    place (timed by a watcher reading it back to back), and every
//!    waiter returns within its bound; a gated dependent's pre-start
//!    (`phoenix-hook <id> pre-start`, `guests.<id>.gate_on_ca`) exits 0
//!    only after that, and after a health check of the real CA;
//! 2. two renewals never overlap (each `step` call is timestamped by a
//!    wrapper on PATH);
//! 3. a reader polling the certificate files never sees a partial file,
//!    nor a certificate whose key is not in place (keys change: SAN drift
//!    and `--force`), and the pair left in place matches;
//! 4. nothing is issued or renewed before the token is in place, and a
//!    run that says the CA is not ready asked it nothing: the renewals
//!    are not gated by the harness, `phoenix-renew run` checks for itself;
//! 5. the sync's renewal starts only after its swarm step succeeded;
//! 6. the sync's deployment starts only after its renewal succeeded.
//!
//! Every iteration brings the CA guest up once more, one of two ways:
//!
//! - a restart (two iterations in three): the previous generation is
//!   published, and a waiter of it returns; then the CA's pre-start makes a
//!   new generation, and in half of them a copy of the old token is put
//!   back (a late writer): everything started after must wait for the new
//!   publish;
//! - a cold boot: the CA's post-stop withdraws the token, then its
//!   pre-start races with the waiters and dependents; in half of them the
//!   CA does not answer `/health` at first (a forwarder in front of it
//!   closes connections) and comes up at a random time, before or after
//!   the publish.
//!
//! The pre-start is the hookscript (`phoenix-hook 103 pre-start`, in a
//! private mount namespace where the CA's storage is mounted) in three
//! iterations of four, `phoenix-ca invalidate` otherwise. Then, at random:
//! a publish (after the pre-start) carrying the real CA's fingerprint,
//! three waiters (two with inotify, one poll-only), two gated dependents'
//! pre-start (a container checking its bind mount, and a VM), whose health
//! check asks the real step-ca. Every 4th iteration also renews, with the
//! CA slower to publish (60-300 ms): the sync (a swarm stand-in, then
//! `phoenix-renew run`, then a deployment stand-in, each after the one
//! before succeeded, as phoenix-sync.target orders them) and two more
//! renewals (the timer, a run by hand) at random times, each run again
//! after exit 75 as its unit does, against the same step-ca and a
//! `--renew-now` that makes every run due; a reader polls the pair meanwhile.
//!
//! The mutation self-test runs the same loop against broken variants
//! (tests/race_support `Variant`) and shows each invariant firing.
//!
//! `PHOENIX_RACE_ITERATIONS` (default 150) sets the count of the real
//! run; `PHOENIX_RACE_MUTANT_ITERATIONS` (default 8) each mutant's (more
//! if it is not caught yet, up to four times as many). Each prints what
//! was exercised, the violations per invariant and the time taken, also
//! into `target/tmp/race-summary.txt` and `race-mutants.txt`
//! (benches/race.sh runs 1,000 iterations).

mod common;
mod hook_support;
mod race_support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use phoenix_hooks::cert::Root;
use race_support::renewal::{step_events, Ask, Reader, Renewal};
use race_support::world::{rand_below, rand_ms, CaWorld, CA_ID, DEPENDENTS, GATE_S, HEALTH_S};
use race_support::{check, now_us, Event, Invariant, Role, SyncStep, Tally, Variant};

const WAIT_BOUND_S: u64 = 10;

/// The tests of this file share two cores: one harness at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How one iteration brings the CA up (a fixed pattern over `i`, so the
/// counts the test asserts are known).
#[derive(Debug, Clone, Copy)]
struct Scenario {
    /// Post-stop first, then the pre-start raced; else a restart.
    cold: bool,
    /// The pre-start is the hookscript; else `phoenix-ca invalidate`.
    via_hook: bool,
    /// A restart that puts a copy of the old token back after the pre-start.
    stale_copy: bool,
    /// A cold boot where the CA does not answer at first (its token may be
    /// published before it does): the dependents wait for both.
    ca_late: bool,
    /// The sync, two more renewals and the reader run too.
    renewing: bool,
}

impl Scenario {
    fn of(i: usize) -> Scenario {
        let cold = i % 3 == 1;
        Scenario {
            cold,
            via_hook: !i.is_multiple_of(4),
            stale_copy: !cold && i.is_multiple_of(2),
            ca_late: i % 6 == 1,
            renewing: i.is_multiple_of(4),
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run `f` (which returns an exit code) and say when it ended.
fn timed(role: Role, id: usize, bound_s: u64, f: impl FnOnce() -> i32) -> Event {
    let started = now_us();
    let code = f();
    Event::WaiterEnd {
        id,
        role,
        code,
        at: now_us(),
        started,
        bound: bound_s * 1_000_000,
    }
}

/// One run of the harness: the worlds and the variant they run.
struct Harness {
    variant: Variant,
    world: CaWorld,
    renewal: Renewal,
    root: Root,
    // Last: the CA stops after the worlds that use it.
    _ca: common::TestCa,
}

impl Harness {
    fn new(variant: Variant) -> Harness {
        let ca = common::TestCa::start(None);
        let world = CaWorld::new(&ca);
        let renewal = Renewal::new(&ca, &world.layout.state, variant);
        let root = phoenix_hooks::cert::read_root(&ca.root_cert()).unwrap();
        // The CA was up once before: the first restart has a generation to end.
        assert!(world.publish().status().unwrap().success());
        Harness {
            variant,
            world,
            renewal,
            root,
            _ca: ca,
        }
    }

    /// A waiter of this variant, to its end: its exit code.
    fn wait(&self, poll_only: bool) -> i32 {
        let bash = self.variant == Variant::StaleWaiter;
        let mut waiter = self.world.waiter(bash, poll_only, WAIT_BOUND_S);
        waiter.stdout(Stdio::null()).stderr(Stdio::null());
        waiter.status().unwrap().code().unwrap_or(-1)
    }

    /// The CA guest's pre-start: a new generation.
    fn pre_start(&self, via_hook: bool) -> Option<Event> {
        if via_hook {
            let o = self.world.hook(CA_ID, "pre-start");
            return (!o.status.success()).then(|| {
                Event::Failed(format!(
                    "phoenix-hook {CA_ID} pre-start exited {:?}: {}",
                    o.status.code(),
                    stderr(&o)
                ))
            });
        }
        let st = self.world.ca(&["invalidate"]).status().unwrap();
        (!st.success()).then(|| Event::Failed(format!("phoenix-ca invalidate exited {st}")))
    }

    fn iteration(&self, i: usize) -> Tally {
        let sc = Scenario::of(i);
        let world = &self.world;
        let events = Mutex::new(Vec::new());
        if sc.cold {
            // The CA guest stopped: its stop phase withdraws the token.
            let o = world.hook(CA_ID, "post-stop");
            assert!(o.status.success(), "post-stop: {}", stderr(&o));
            assert!(!world.ready().exists(), "post-stop left the token");
            world.gate.set(!sc.ca_late);
        } else {
            // A restart: the previous generation is published, and its
            // waiter returns; then the pre-start.
            let old = std::fs::read(world.ready()).expect("the previous generation's token");
            let prev = timed(Role::Previous, 0, WAIT_BOUND_S, || self.wait(false));
            let mut ev = events.lock().unwrap();
            ev.push(prev);
            ev.extend(self.pre_start(sc.via_hook));
            if sc.stale_copy {
                // A late writer puts the old token back: it is stale.
                std::fs::write(world.ready(), &old).unwrap();
            }
        }
        let step_log = self.renewal.dir.path().join(format!("steps-{i}.log"));
        let done = AtomicBool::new(false);
        let done = &done;
        let push = |e: Event| events.lock().unwrap().push(e);
        let push = &push;
        std::thread::scope(|s| {
            s.spawn(move || push(world.watch_token()));
            for id in 0..3 {
                s.spawn(move || {
                    std::thread::sleep(rand_ms(if sc.cold { 10 } else { 5 }));
                    push(timed(Role::Waiter, id, WAIT_BOUND_S, || self.wait(id == 2)));
                });
            }
            for (id, vmid) in DEPENDENTS.into_iter().enumerate() {
                s.spawn(move || {
                    std::thread::sleep(rand_ms(10));
                    push(timed(Role::Dependent, id, GATE_S + HEALTH_S, || {
                        let o = world.hook(vmid, "pre-start");
                        if !o.status.success() {
                            eprintln!("dependent {vmid} pre-start: {}", stderr(&o));
                        }
                        o.status.code().unwrap_or(-1)
                    }));
                });
            }
            s.spawn(move || {
                if sc.cold {
                    std::thread::sleep(rand_ms(10));
                    push_all(push, self.pre_start(sc.via_hook));
                }
                // The CA guest publishes once it is up: after its
                // pre-start; slower when renewals are waiting for it.
                let delay = if sc.renewing {
                    Duration::from_millis(60) + rand_ms(240)
                } else {
                    rand_ms(30)
                };
                std::thread::sleep(delay);
                let st = world.publish().status().unwrap();
                assert!(st.success(), "publish failed");
            });
            if sc.ca_late {
                s.spawn(move || {
                    std::thread::sleep(rand_ms(60));
                    // Noted before it is true: a dependent's health check
                    // can only pass after this time.
                    push(Event::CaUp(now_us()));
                    world.gate.set(true);
                });
            }
            if sc.renewing {
                let log = &step_log;
                let mut runs = self.sync(s, log, push);
                for _ in 0..2 {
                    // The timer, and a run by hand: not ordered after
                    // anything, not gated by the harness.
                    runs.push(s.spawn(move || {
                        std::thread::sleep(rand_ms(400));
                        let (_, evs) = self.renewal.run(Ask::random(), log);
                        push_all(push, evs);
                    }));
                }
                let reader = s.spawn(move || {
                    let mut reader = Reader::new(&self.renewal);
                    while !done.load(Ordering::Relaxed) {
                        reader.look();
                        std::thread::sleep(Duration::from_micros(250));
                    }
                    reader
                });
                for r in runs {
                    r.join().unwrap();
                }
                done.store(true, Ordering::Relaxed);
                push_all(push, reader.join().unwrap().seen(&self.root));
                push(self.renewal.settled(&self.root));
            }
        });
        let mut ev = events.into_inner().unwrap();
        ev.extend(step_events(&step_log));
        check(&ev)
    }

    /// The sync: swarm, renewal, deployment, each after the one before
    /// succeeded (as the units order them); in the unordered variant all
    /// three at once. Swarm and deployment are stand-ins that take a
    /// while (the real ones need a swarm; the units' ordering is tested by
    /// tests/systemd.rs and tests/swarm_units.rs); the renewal is real.
    fn sync<'s, 'e: 's>(
        &'e self,
        s: &'s std::thread::Scope<'s, 'e>,
        log: &'e Path,
        push: &'e (impl Fn(Event) + Sync),
    ) -> Vec<std::thread::ScopedJoinHandle<'s, ()>> {
        let step = move |step: SyncStep| {
            let from = now_us();
            let code = match step {
                SyncStep::Swarm => stand_in(10 + rand_below(31)),
                SyncStep::Renew => {
                    let (code, evs) = self.renewal.run(Ask::random(), log);
                    push_all(push, evs);
                    code
                }
                SyncStep::Deploy => stand_in(rand_below(21)),
            };
            push(Event::Sync {
                step,
                from,
                to: now_us(),
                code,
            });
            code
        };
        let steps = [SyncStep::Swarm, SyncStep::Renew, SyncStep::Deploy];
        if self.variant == Variant::Unordered {
            return steps
                .map(|which| {
                    s.spawn(move || {
                        std::thread::sleep(rand_ms(10));
                        step(which);
                    })
                })
                .into();
        }
        vec![s.spawn(move || {
            std::thread::sleep(rand_ms(10));
            for which in steps {
                if step(which) != 0 {
                    break;
                }
            }
        })]
    }
}

/// A stand-in for a step of the sync that takes `ms` and succeeds.
fn stand_in(ms: u64) -> i32 {
    let st = Command::new("sleep")
        .arg(format!("{}.{:03}", ms / 1000, ms % 1000))
        .status()
        .unwrap();
    st.code().unwrap_or(-1)
}

fn push_all(push: &impl Fn(Event), e: impl IntoIterator<Item = Event>) {
    e.into_iter().for_each(push)
}

/// What one harness run did.
struct Run {
    variant: Variant,
    iterations: usize,
    total: Tally,
    elapsed: Duration,
}

impl Run {
    fn caught(&self) -> bool {
        let by = self.variant.caught_by();
        !by.is_empty() && by.iter().all(|inv| self.total.count(*inv) > 0)
    }

    fn summary(&self) -> String {
        let t = &self.total;
        format!(
            "variant={} iterations={} violations={} [{}] waiters={} dependents={} \
             previous_waiters={} syncs={} renew_runs={} not_ready={} step_calls={} \
             issued_new_key={} renewed_same_key={} reads={} pairs_seen={} key_ahead={} inconclusive={} partial={} cert_ahead={} \
             time={:.1}s",
            self.variant.name(),
            self.iterations,
            t.violations.len(),
            t.per_invariant(),
            t.waiters,
            t.dependents,
            t.previous,
            t.syncs,
            t.renew_runs,
            t.not_ready,
            t.step_calls,
            t.issued,
            t.renewed,
            t.reads,
            t.pairs,
            t.key_ahead(),
            t.inconclusive,
            t.partial,
            t.cert_ahead,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Run the harness loop for `variant`: `min` iterations, then on until
/// the invariants that must catch it have all fired, at most `max`.
fn race(variant: Variant, min: usize, max: usize) -> Run {
    let t0 = Instant::now();
    let h = Harness::new(variant);
    let mut run = Run {
        variant,
        iterations: 0,
        total: Tally::default(),
        elapsed: Duration::ZERO,
    };
    for i in 0..max {
        if i >= min && (variant == Variant::Product || run.caught()) {
            break;
        }
        run.total.add(h.iteration(i));
        run.iterations = i + 1;
    }
    run.elapsed = t0.elapsed();
    run
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// cargo test shows a passing test's output only with --nocapture:
/// scripts/test.sh prints these files after the run.
fn record(file: &str, text: &str) {
    println!("{text}");
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join(file), text);
}

#[test]
fn randomized_races_keep_every_invariant() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let n = env_count("PHOENIX_RACE_ITERATIONS", 150);
    let run = race(Variant::Product, n, n);
    let (mut cold, mut stale, mut late, mut hook, mut renewing) = (0, 0, 0, 0, 0);
    for sc in (0..n).map(Scenario::of) {
        cold += usize::from(sc.cold);
        stale += usize::from(sc.stale_copy);
        late += usize::from(sc.ca_late);
        hook += usize::from(sc.via_hook);
        renewing += usize::from(sc.renewing);
    }
    record(
        "race-summary.txt",
        &format!(
            "{} restarts={} stale_copies={stale} cold_boots={cold} ca_late={late} \
             hook_prestarts={hook}\n",
            run.summary(),
            n - cold
        ),
    );
    let t = &run.total;
    let shown: Vec<String> = t
        .violations
        .iter()
        .map(|(inv, what)| format!("{}: {what}", inv.name()))
        .collect();
    assert!(t.violations.is_empty(), "violations:\n{}", shown.join("\n"));
    // The harness exercised what it claims to: every waiter, dependent and
    // previous-generation waiter ran to its end, every sync ran, the gate
    // held renewals that came early, keys changed and stayed, and the
    // reader really read.
    assert_eq!(t.waiters, 3 * n);
    assert_eq!(t.dependents, DEPENDENTS.len() * n);
    assert_eq!(t.previous, n - cold);
    assert_eq!(t.syncs, renewing);
    if n >= 8 {
        assert!(t.not_ready > 0, "no renewal met an unready CA");
        assert!(t.issued > renewing, "too few new keys: {}", t.issued);
        assert!(t.renewed > 0, "no renewal kept its key");
        assert!(t.reads > 0);
    }
}

/// The mutation self-test: the same loop against each broken variant,
/// `PHOENIX_RACE_MUTANT_ITERATIONS` (default 8) iterations, then on until
/// the invariants that must catch it have fired (at most four times as
/// many).
#[test]
fn each_invariant_fires_on_a_broken_variant() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let min = env_count("PHOENIX_RACE_MUTANT_ITERATIONS", 8);
    let runs: Vec<Run> = Variant::MUTANTS
        .into_iter()
        .map(|v| race(v, min, 4 * min.max(1)))
        .collect();
    let mut text = String::new();
    for run in &runs {
        text += &format!("{}\n", run.summary());
        // What catching it looked like: the first violations of each.
        for inv in run.variant.caught_by() {
            let seen = run.total.violations.iter().filter(|(i, _)| i == inv);
            for (_, what) in seen.take(2) {
                text += &format!("  {}: {what}\n", inv.name());
            }
        }
    }
    record("race-mutants.txt", &text);
    for run in &runs {
        let wanted: Vec<&str> = run.variant.caught_by().iter().map(|i| i.name()).collect();
        assert!(
            run.caught(),
            "{} not caught by {} in {} iterations: {}",
            run.variant.name(),
            wanted.join(" and "),
            run.iterations,
            run.total.per_invariant()
        );
    }
    // Every invariant but the catch-all is shown firing by some mutant.
    for inv in Invariant::ALL {
        if inv != Invariant::Failed {
            assert!(runs.iter().any(|r| r.variant.caught_by().contains(&inv)));
        }
    }
}
