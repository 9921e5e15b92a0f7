//! `phoenix-swarm ensure`: make the manager active and every other member
//! a Ready node of its swarm, then tidy stale `Down` twins and add missing
//! node labels. Idempotent: a second run issues no mutating command.
//!
//! The rules that keep a cluster safe:
//! - A state that cannot be read is waited for and reported (exit 75),
//!   never taken for "inactive": no `swarm init` on a manager whose daemon
//!   merely did not answer, and `--force-new-cluster` only when asked.
//! - A pending node is waited for, never rejoined; a timed-out join may
//!   still complete, so the state is read again before any retry.
//! - A member of another swarm is left alone unless `--repair`.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::docker::{
    Docker, JoinResult, JoinToken, NodeEntry, NodeState, SwarmInfo, ERR_NO_LEADER,
};
use super::topology::{Member, Topology};
use crate::exit::{err, kind_of, Kind};
use crate::phoenix::{GuestType, SwarmRole};
use crate::proxmox::{Guest, Proxmox};
use crate::signal;

/// Options of `ensure`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnsureOptions {
    /// Print the mutating commands instead of running them.
    pub dry_run: bool,
    /// Allow `docker swarm init --force-new-cluster` on a manager in state
    /// `error` or without a leader.
    pub force_new_cluster: bool,
    /// Let a member of another swarm (or one in state error) leave it and
    /// join this one.
    pub repair: bool,
}

/// Bounds of the waits.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// For a VM to run and its guest agent to answer.
    pub agent: Duration,
    /// For a node to leave pending/error/locked, or its state to be read.
    pub state: Duration,
}

/// The manager's view of its swarm.
struct Cluster {
    manager_node: String,
    id: String,
    nodes: Vec<NodeEntry>,
}

impl Cluster {
    fn has(&self, node_id: &str) -> bool {
        !node_id.is_empty() && self.nodes.iter().any(|n| n.id == node_id)
    }
}

/// Backoff between state reads: 200 ms doubling to 5 s, within a bound.
struct Waiter {
    deadline: Instant,
    delay: Duration,
}

impl Waiter {
    fn new(bound: Duration) -> Self {
        Waiter {
            deadline: Instant::now() + bound,
            delay: Duration::from_millis(200),
        }
    }

    /// Sleep before the next try; `Ok(false)` once the bound has passed.
    fn pause(&mut self) -> Result<bool> {
        signal::check()?;
        let now = Instant::now();
        if now >= self.deadline {
            return Ok(false);
        }
        signal::sleep(self.delay.min(self.deadline - now));
        signal::check()?;
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
        Ok(true)
    }

    /// Whole seconds left before the bound, for progress lines.
    fn left(&self) -> u64 {
        self.deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
    }
}

/// One run of `ensure`.
pub struct Run<'a> {
    px: &'a Proxmox,
    topo: &'a Topology,
    opts: EnsureOptions,
    bounds: Bounds,
    out: &'a mut dyn Write,
    changes: usize,
    planned: usize,
    tokens: Vec<(SwarmRole, JoinToken)>,
}

fn guest(m: &Member) -> Guest {
    Guest {
        kind: GuestType::Vm,
        id: m.vmid,
    }
}

fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

impl<'a> Run<'a> {
    /// A run over `topo`, reporting on `out`.
    pub fn new(
        px: &'a Proxmox,
        topo: &'a Topology,
        opts: EnsureOptions,
        bounds: Bounds,
        out: &'a mut dyn Write,
    ) -> Self {
        Run {
            px,
            topo,
            opts,
            bounds,
            out,
            changes: 0,
            planned: 0,
            tokens: Vec::new(),
        }
    }

    fn say(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
        log::debug!("{line}");
    }

    /// Run a mutating step, or in a dry run print it. `shown` is the
    /// command as the operator should see it (never a secret).
    fn mutate<T>(
        &mut self,
        m: &Member,
        shown: &str,
        done: &str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<Option<T>> {
        if self.opts.dry_run {
            self.planned += 1;
            self.say(&format!("would run on {}: {shown}", m.what()));
            return Ok(None);
        }
        log::info!("{}: running {shown}", m.what());
        let v = f()?;
        self.changes += 1;
        self.say(&format!("{}: {done}", m.what()));
        Ok(Some(v))
    }

    fn reach(&self, m: &Member) -> Result<()> {
        self.px
            .wait_reachable(guest(m), self.bounds.agent)
            .with_context(|| format!("{}: cannot run docker in it", m.what()))
    }

    /// Everything, in order. Worker failures do not stop the others; the
    /// result says that something failed (the worst kind wins).
    pub fn ensure(&mut self) -> Result<()> {
        let topo = self.topo;
        let mut cluster = self.manager()?;
        let mut errors = Vec::new();
        let mut node_ids = Vec::new();
        if let Some(c) = &cluster {
            node_ids.push((topo.manager.clone(), c.manager_node.clone()));
        } else if self.opts.dry_run {
            // The swarm the real run would make: its manager's node too.
            node_ids.push((topo.manager.clone(), String::new()));
        }
        for m in &topo.others {
            // A stop request ends the run (128+N), not "N steps failed".
            signal::check()?;
            match self.member(m, cluster.as_mut()) {
                Ok(Some(id)) => node_ids.push((m.clone(), id)),
                Ok(None) => node_ids.push((m.clone(), String::new())),
                Err(e) => errors.push(e),
            }
        }
        if let Some(c) = cluster.as_mut() {
            if let Err(e) = self.remove_stale(c) {
                errors.push(e);
            }
        }
        for (m, id) in &node_ids {
            if let Err(e) = self.labels(m, id) {
                errors.push(e);
            }
        }
        signal::check()?;
        self.summary(cluster.as_ref(), errors.is_empty());
        combine(errors)
    }

    fn summary(&mut self, cluster: Option<&Cluster>, ok: bool) {
        let line = match (self.opts.dry_run, self.planned, self.changes) {
            (true, 0, _) if ok => "dry run: no change".to_string(),
            (true, n, _) => format!("dry run: {n} command(s) would run"),
            (false, _, 0) if ok => match cluster {
                Some(c) => format!(
                    "no change: swarm {} has {} node(s), every member in place",
                    c.id,
                    c.nodes.len()
                ),
                None => "no change".to_string(),
            },
            (false, _, n) => format!("{n} change(s)"),
        };
        self.say(&line);
    }

    /// The manager: active with control, or initialised from inactive.
    /// `None` only in a dry run that would initialise it.
    fn manager(&mut self) -> Result<Option<Cluster>> {
        let topo = self.topo;
        let m = &topo.manager;
        self.reach(m)?;
        let d = Docker::new(self.px, guest(m), m.what());
        let mut wait = Waiter::new(self.bounds.state);
        let mut inited = false;
        let mut forced = false;
        let mut last: String;
        loop {
            match d.info() {
                Ok(info) => match (info.state, info.control) {
                    (NodeState::Active, true) => match d.node_ls() {
                        Ok(nodes) => {
                            return Ok(Some(Cluster {
                                manager_node: info.node_id.clone(),
                                id: info.cluster_id.clone().unwrap_or_default(),
                                nodes,
                            }))
                        }
                        Err(e) if format!("{e:#}").contains(ERR_NO_LEADER) => {
                            if self.opts.force_new_cluster && !forced {
                                forced = true;
                                if self.init(m, &d, true)?.is_none() {
                                    return Ok(None);
                                }
                                continue;
                            }
                            last = "active but the swarm has no leader (lost quorum; \
                                    --force-new-cluster recovers from this manager)"
                                .into();
                        }
                        Err(e) => last = format!("{e:#}"),
                    },
                    (NodeState::Active, false) => {
                        return Err(err(
                            Kind::Failed,
                            format!(
                                "{}: is a worker of another swarm (node {}, managers {}), not a manager: \
                                 refusing to touch it; make it leave that swarm by hand",
                                m.what(),
                                info.node_id,
                                managers(&info)
                            ),
                        ));
                    }
                    (NodeState::Inactive, _) => {
                        if inited {
                            return Err(err(
                                Kind::Failed,
                                format!("{}: still inactive after docker swarm init", m.what()),
                            ));
                        }
                        inited = true;
                        if self.init(m, &d, false)?.is_none() {
                            return Ok(None);
                        }
                        continue;
                    }
                    (NodeState::Error, _) if self.opts.force_new_cluster && !forced => {
                        forced = true;
                        if self.init(m, &d, true)?.is_none() {
                            return Ok(None);
                        }
                        continue;
                    }
                    (state, _) => last = describe(state, &info),
                },
                Err(e) => last = format!("{e:#}"),
            }
            let line = format!(
                "{}: swarm manager not ready: {last}; waiting ({}s left)",
                m.what(),
                wait.left()
            );
            log::info!("{line}");
            crate::notify::status(&line);
            if !wait.pause()? {
                return Err(err(
                    Kind::TempFail,
                    format!(
                        "{}: swarm manager not ready after {}: {last}; not initialising it",
                        m.what(),
                        secs(self.bounds.state)
                    ),
                ));
            }
        }
    }

    fn init(&mut self, m: &Member, d: &Docker, force: bool) -> Result<Option<JoinResult>> {
        let args = self.topo.init_args(force);
        let shown = format!("docker {}", args.join(" "));
        let done = if force {
            "forced a new cluster from this manager's state (--force-new-cluster)"
        } else {
            "initialised the swarm"
        };
        let r = self.mutate(m, &shown, done, || d.init(&args))?;
        if r == Some(JoinResult::AlreadyInSwarm) {
            log::info!(
                "{}: already in a swarm after all; reading its state again",
                m.what()
            );
        }
        Ok(r)
    }

    /// A member that is not the manager: joined, or waited for. Returns
    /// its node id (`None` in a dry run that would join it).
    fn member(&mut self, m: &Member, mut cluster: Option<&mut Cluster>) -> Result<Option<String>> {
        self.reach(m)?;
        let mut d = Docker::new(self.px, guest(m), m.what());
        let mut wait = Waiter::new(self.bounds.state);
        let (mut joins, mut left) = (0, false);
        let mut last: String;
        loop {
            let info = match d.info() {
                Ok(info) => info,
                Err(e) => {
                    last = format!("{e:#}");
                    if !wait.pause()? {
                        return Err(self.not_ready(m, &last));
                    }
                    continue;
                }
            };
            match info.state {
                NodeState::Active => {
                    if let Some(c) = cluster.as_deref_mut() {
                        if !c.has(&info.node_id) {
                            // A node that has just joined: list again.
                            c.nodes = self.manager_docker().node_ls()?;
                        }
                        if c.has(&info.node_id) {
                            if joins > 0 {
                                log::info!("{}: a member (node {})", m.what(), info.node_id);
                            }
                            return Ok(Some(info.node_id));
                        }
                    }
                    if !self.opts.repair || left {
                        return Err(err(
                            Kind::Failed,
                            format!(
                                "{}: is active in another swarm (node {}, managers {}): refusing to move it; \
                                 rerun with --repair to make it leave and join this one",
                                m.what(),
                                info.node_id,
                                managers(&info)
                            ),
                        ));
                    }
                    left = true;
                    self.mutate(
                        m,
                        "docker swarm leave --force",
                        "left its other swarm (--repair)",
                        || d.leave_force(),
                    )?;
                    if self.opts.dry_run {
                        return self.plan_join(m);
                    }
                    continue;
                }
                NodeState::Inactive => {
                    if self.opts.dry_run || cluster.is_none() {
                        return self.plan_join(m);
                    }
                    if joins == 3 {
                        return Err(err(
                            Kind::Failed,
                            format!("{}: still inactive after {joins} joins", m.what()),
                        ));
                    }
                    joins += 1;
                    match self.join(m, &mut d)? {
                        JoinResult::Joined | JoinResult::AlreadyInSwarm => continue,
                        JoinResult::InProgress => last = "joining in the background".into(),
                    }
                }
                NodeState::Error | NodeState::Locked if self.opts.repair && !left => {
                    left = true;
                    let done = format!("left the swarm it was in ({}; --repair)", info.state);
                    self.mutate(m, "docker swarm leave --force", &done, || d.leave_force())?;
                    if self.opts.dry_run {
                        return self.plan_join(m);
                    }
                    continue;
                }
                state => last = describe(state, &info),
            }
            let line = format!("{}: {last}; waiting ({}s left)", m.what(), wait.left());
            log::info!("{line}");
            crate::notify::status(&line);
            if !wait.pause()? {
                return Err(self.not_ready(m, &last));
            }
        }
    }

    fn not_ready(&self, m: &Member, last: &str) -> anyhow::Error {
        err(
            Kind::TempFail,
            format!(
                "{}: not a swarm member after {}: {last}",
                m.what(),
                secs(self.bounds.state)
            ),
        )
    }

    fn plan_join(&mut self, m: &Member) -> Result<Option<String>> {
        let shown = format!(
            "docker swarm join --token <{} token from {}, on stdin> {}",
            m.role_name(),
            self.topo.manager.what(),
            self.topo.remote()
        );
        self.mutate(m, &shown, "joined", || Ok(()))?;
        Ok(None)
    }

    fn manager_docker(&self) -> Docker<'a> {
        let m = &self.topo.manager;
        Docker::new(self.px, guest(m), m.what())
    }

    fn token(&mut self, role: SwarmRole) -> Result<JoinToken> {
        if let Some((_, t)) = self.tokens.iter().find(|(r, _)| *r == role) {
            return Ok(t.clone());
        }
        let name = match role {
            SwarmRole::Manager => "manager",
            SwarmRole::Worker => "worker",
        };
        let t = self.manager_docker().join_token(name)?;
        self.tokens.push((role, t.clone()));
        Ok(t)
    }

    fn join(&mut self, m: &Member, d: &mut Docker) -> Result<JoinResult> {
        let token = self.token(m.role)?;
        let remote = self.topo.remote();
        let shown = format!("docker swarm join --token <redacted, on stdin> {remote}");
        let done = format!("joined the swarm as a {}", m.role_name());
        let r = self
            .mutate(m, &shown, &done, || d.join(&token, &remote))?
            .unwrap_or(JoinResult::Joined);
        match r {
            JoinResult::InProgress => {
                log::warn!(
                    "{}: the join timed out; it may still complete, reading the state again",
                    m.what()
                )
            }
            JoinResult::AlreadyInSwarm => {
                log::info!("{}: already in a swarm; reading its state again", m.what())
            }
            JoinResult::Joined => {}
        }
        Ok(r)
    }

    /// Remove `Down` entries whose hostname matches a `Ready` node: the
    /// leftovers of earlier leave/join cycles. Nothing else.
    fn remove_stale(&mut self, c: &mut Cluster) -> Result<()> {
        let d = self.manager_docker();
        c.nodes = d.node_ls()?;
        let ready: Vec<&str> = c
            .nodes
            .iter()
            .filter(|n| n.is_ready())
            .map(|n| n.hostname.as_str())
            .collect();
        let stale: Vec<NodeEntry> = c
            .nodes
            .iter()
            .filter(|n| n.is_down() && ready.contains(&n.hostname.as_str()))
            .cloned()
            .collect();
        let manager = self.topo.manager.clone();
        for n in stale {
            if n.is_manager() {
                log::warn!(
                    "{}: stale Down manager entry {} (hostname {}) left alone: demote it, then remove it",
                    manager.what(),
                    n.id,
                    n.hostname
                );
                continue;
            }
            let shown = format!("docker node rm {}", n.id);
            let done = format!("removed stale Down node {} (hostname {})", n.id, n.hostname);
            self.mutate(&manager, &shown, &done, || d.node_rm(&n.id))?;
        }
        Ok(())
    }

    /// Add the configured labels a node lacks (or has with another value).
    fn labels(&mut self, m: &Member, node_id: &str) -> Result<()> {
        if m.labels.is_empty() {
            return Ok(());
        }
        let manager = self.topo.manager.clone();
        let (missing, target) = if node_id.is_empty() {
            // Dry run: the node does not exist yet.
            (m.labels.clone(), format!("<node id of {}>", m.what()))
        } else {
            let have = self.manager_docker().node_labels(node_id)?;
            let missing = m
                .label_pairs()
                .into_iter()
                .zip(&m.labels)
                .filter(|((k, v), _)| have.get(k) != Some(v))
                .map(|(_, l)| l.clone())
                .collect();
            (missing, node_id.to_string())
        };
        if missing.is_empty() {
            return Ok(());
        }
        let flags: Vec<String> = missing.iter().map(|l| format!("--label-add {l}")).collect();
        let shown = format!("docker node update {} {target}", flags.join(" "));
        let done = format!("labelled node of {} with {}", m.what(), missing.join(", "));
        let d = self.manager_docker();
        self.mutate(&manager, &shown, &done, || d.label_add(node_id, &missing))?;
        Ok(())
    }
}

fn managers(info: &SwarmInfo) -> String {
    if info.managers.is_empty() {
        return "unknown".into();
    }
    info.managers
        .iter()
        .map(|p| p.addr.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(state: NodeState, info: &SwarmInfo) -> String {
    match state {
        NodeState::Error if !info.error.is_empty() => format!("state error ({})", info.error),
        NodeState::Locked => "state locked (run docker swarm unlock with the unlock key)".into(),
        s => format!("state {s}"),
    }
}

/// One error as is; several as one, temporary only if all are.
fn combine(mut errors: Vec<anyhow::Error>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        n => {
            let temp = errors
                .iter()
                .all(|e| matches!(kind_of(e), Kind::TempFail | Kind::Timeout));
            let lines: Vec<String> = errors.iter().map(|e| format!("  {e:#}")).collect();
            Err(err(
                if temp { Kind::TempFail } else { Kind::Failed },
                format!("{n} swarm steps failed:\n{}", lines.join("\n")),
            ))
        }
    }
}
