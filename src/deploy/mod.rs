//! The third step of the sync, after the swarm and the certificates:
//! `phoenix-deploy run` deploys the Phoenix stacks on the swarm from the
//! Proxmox host; `phoenix-deploy status` shows where each stands.
//!
//! A run, on the swarm manager (every docker command through the one
//! `qm guest exec` docker layer, [`crate::swarm::docker`]):
//! 1. [`plan`]: which stack goes on which VM's node, checked across
//!    `phoenix_stacks_config.json`, `phoenix_vm_configs.json` and
//!    `toolkit.json` before anything changes;
//! 2. what the stacks expect is made to exist: the overlay networks and the
//!    secrets of `deploy.secrets` (a host file's bytes, on stdin, under a
//!    versioned name as certificate secrets are, [`crate::swarm::secrets`]);
//! 3. each stack's compose file is rendered ([`render`]): variables into
//!    the environment, Traefik labels into `deploy.labels`, a placement
//!    constraint on the node label `phoenix.vmid` that `phoenix-swarm`
//!    sets, the toolkit's versioned secrets under their current names, the
//!    environment's files mounted as secrets;
//! 4. a stack whose rendered text differs from the last one deployed
//!    ([`state`]), or that has gone from the swarm, is deployed with
//!    `docker stack deploy -c -` (the text on stdin), then waited for,
//!    bounded, until it runs ([`converge`]);
//! 5. versions of the toolkit's deploy secrets that no service uses any
//!    more are removed.
//!
//! One stack failing does not stop the others; the exit status says the
//! worst: 2 for a configuration or compose error, 1 for a stack that does
//! not run, 75 for one still converging at the bound or a manager not
//! reachable.

pub mod converge;
mod interpolate;
pub mod plan;
pub mod render;
pub mod state;
pub mod status;
mod yaml;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::cluster;
use crate::config::Config;
use crate::exit::{err, kind_of, Kind};
use crate::guestdir;
use crate::phoenix::GuestType;
use crate::proxmox::Guest;
use crate::signal;
use crate::swarm::docker::{Docker, NodeState};
use crate::swarm::secrets::{
    check_secret_name, is_version_of, older_versions, version_name, LABEL_DIGEST, LABEL_NAME,
    SECRET_MAX_BYTES,
};
use crate::swarm::service::{Removed, SecretEntry};
use plan::{Plan, StackPlan};
use render::{Compose, FileMount, RenderInput};

pub use status::DeployStatus;

/// Largest compose file read.
pub const COMPOSE_LIMIT: u64 = 1 << 20;

/// What `run` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Read and render, print the compose, its diff and the commands;
    /// change nothing, take no lock.
    pub dry_run: bool,
    /// Only this stack (its key or its name).
    pub only: Option<String>,
}

/// A secret made from a host file: a `deploy.secrets` entry or an
/// environment's file.
struct HostSecret {
    /// Its logical name (label `phoenix.secret`).
    logical: String,
    /// `<logical>-<12 hex>`.
    version: String,
    sha256: String,
    bytes: Vec<u8>,
    /// Where the bytes came from, for messages.
    source: String,
}

impl HostSecret {
    fn read(logical: &str, path: &Path, origin: &str) -> Result<HostSecret> {
        // Stacks live on storage that guests write: no link followed,
        // at most what swarm takes as a secret.
        let bytes = guestdir::read_file(path, SECRET_MAX_BYTES).map_err(|e| {
            err(
                Kind::Config,
                format!("{origin}: cannot read '{}': {e}", path.display()),
            )
        })?;
        let (version, sha256) = version_name(logical, &bytes);
        Ok(HostSecret {
            logical: logical.to_string(),
            version,
            sha256,
            bytes,
            source: path.display().to_string(),
        })
    }
}

/// One run's view of the manager and what it has done.
struct Run<'a> {
    config: &'a Config,
    d: &'a Docker<'a>,
    dry_run: bool,
    out: &'a mut dyn Write,
    existing: Vec<SecretEntry>,
    /// Host secrets made (or found) this run, by versioned name.
    made: BTreeMap<String, String>,
    changes: usize,
}

impl Run<'_> {
    fn say(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
        log::debug!("{line}");
    }

    /// Create `s` unless it exists.
    fn ensure_secret(&mut self, s: &HostSecret) -> Result<()> {
        if self.made.contains_key(&s.version) || self.existing.iter().any(|e| e.name == s.version) {
            self.made.insert(s.version.clone(), s.logical.clone());
            return Ok(());
        }
        if self.dry_run {
            self.say(&format!(
                "would run: docker secret create --label {LABEL_NAME}={} --label {LABEL_DIGEST}={} {} - (the bytes of '{}')",
                s.logical, s.sha256, s.version, s.source
            ));
        } else {
            let labels = [
                format!("{LABEL_NAME}={}", s.logical),
                format!("{LABEL_DIGEST}={}", s.sha256),
            ];
            self.d.secret_create(&s.version, &labels, &s.bytes)?;
            self.changes += 1;
            self.say(&format!(
                "created swarm secret {} from '{}'",
                s.version, s.source
            ));
        }
        self.made.insert(s.version.clone(), s.logical.clone());
        Ok(())
    }

    fn ensure_networks(&mut self) -> Result<()> {
        for (name, spec) in &self.config.deploy.networks {
            match self.d.network_inspect(name)? {
                Some(n) if n.driver != spec.driver => log::warn!(
                    "network {name} exists with driver {} (deploy.networks.{name} says {}): left as it is",
                    n.driver,
                    spec.driver
                ),
                Some(_) => {}
                None if self.dry_run => self.say(&format!(
                    "would run: docker network create --driver {}{} {name}",
                    spec.driver,
                    if spec.attachable { " --attachable" } else { "" }
                )),
                None => {
                    self.d
                        .network_create(name, &spec.driver, spec.attachable)?;
                    self.changes += 1;
                    self.say(&format!("created network {name} ({})", spec.driver));
                }
            }
        }
        Ok(())
    }

    /// The swarm name to use for the external secret `name`: a
    /// `deploy.secrets` one's current version; else the newest version
    /// the toolkit made (label `phoenix.secret`, as certificate rotation
    /// leaves them); else a secret of that very name.
    fn resolve_secret(&self, name: &str, declared: &BTreeMap<String, String>) -> Result<String> {
        if let Some(v) = declared.get(name) {
            return Ok(v.clone());
        }
        let versions: Vec<&SecretEntry> = self
            .existing
            .iter()
            .filter(|e| {
                e.labels.get(LABEL_NAME).map(String::as_str) == Some(name)
                    && is_version_of(&e.name, name)
            })
            .collect();
        match versions.as_slice() {
            [one] => return Ok(one.name.clone()),
            [] => {}
            many => {
                let names: Vec<&str> = many.iter().map(|e| e.name.as_str()).collect();
                let created = self.d.secret_created(&names)?;
                let newest = names
                    .iter()
                    .zip(&created)
                    .max_by(|a, b| a.1.cmp(b.1))
                    .map(|(n, _)| n.to_string())
                    .unwrap_or_default();
                return Ok(newest);
            }
        }
        if self.existing.iter().any(|e| e.name == name) {
            return Ok(name.to_string());
        }
        Err(err(
            Kind::Failed,
            format!(
                "secret {name} does not exist in the swarm: a certificate's secrets come from \
                 phoenix-renew (post_renewal.swarm_secrets in the manifest; has the renewal run?), \
                 others from a host file (deploy.secrets.{name}.file in toolkit.json)"
            ),
        ))
    }

    /// Render, compare, deploy and wait for one stack. `Ok(true)`: deployed.
    fn stack(
        &mut self,
        s: &StackPlan,
        compose: &Compose,
        declared: &BTreeMap<String, String>,
    ) -> Result<bool> {
        let mut files = Vec::new();
        for (i, f) in s.env.files.iter().enumerate() {
            let origin = format!("{}.files[{i}]", s.env_origin);
            let base = f
                .destination_in_container
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .trim_start_matches('.');
            let logical: String = format!("{}.{base}", s.key)
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            check_secret_name(&logical).map_err(|why| {
                err(
                    Kind::Config,
                    format!("{origin}: the secret it becomes, {why}"),
                )
            })?;
            let hs = HostSecret::read(
                &logical,
                &self.config.deploy.stacks_root.join(&f.source),
                &origin,
            )?;
            self.ensure_secret(&hs)?;
            files.push(FileMount {
                key: format!("phoenix_file_{}", i + 1),
                name: hs.version,
                target: f.destination_in_container.clone(),
            });
        }
        let mut secret_names = BTreeMap::new();
        for ext in compose.external_secrets() {
            let resolved = self.resolve_secret(&ext.name, declared).with_context(|| {
                format!("{}: compose file '{}'", s.what(), s.compose_path.display())
            })?;
            secret_names.insert(ext.name.clone(), resolved);
        }
        for net in compose.external_networks() {
            if self.config.deploy.networks.contains_key(&net.name) {
                continue;
            }
            if self.d.network_inspect(&net.name)?.is_none() {
                return Err(err(
                    Kind::Failed,
                    format!(
                        "{}: network {} does not exist (declare it in deploy.networks to have it created)",
                        s.what(),
                        net.name
                    ),
                ));
            }
        }
        let variables = s.variables();
        let labels: BTreeMap<String, Vec<String>> = s
            .env
            .services
            .iter()
            .filter(|(_, v)| !v.traefik_labels.is_empty())
            .map(|(k, v)| (k.clone(), v.traefik_labels.clone()))
            .collect();
        let constraint = s.constraint();
        let labels_origin = format!("{}.services", s.env_origin);
        let text = compose.render(&RenderInput {
            variables: &variables,
            labels: &labels,
            labels_origin: &labels_origin,
            files: &files,
            constraint: Some(&constraint),
            secret_names: &secret_names,
        })?;
        let sha256 = crate::digest::sha256_hex(text.as_bytes());
        let record = state::load(&self.config.state_dir, &s.key);
        let running = self.d.stack_services(&s.name)?;
        let services = compose.services();
        let all_there = services.iter().all(|svc| {
            running
                .iter()
                .any(|l| l.name == format!("{}_{svc}", s.name))
        });
        if record.as_ref().is_some_and(|r| r.sha256 == sha256) && all_there {
            self.say(&format!("{}: current, not deployed again", s.what()));
            return Ok(false);
        }
        let why = match &record {
            None => "never deployed by this host",
            Some(_) if !all_there => "services missing from the swarm",
            Some(_) => "its compose or a secret changed",
        };
        if self.dry_run {
            self.say(&format!("{}: would deploy ({why})", s.what()));
            let shown = redact(&text, &variables);
            let _ = writeln!(self.out, "--- rendered compose of {} ---\n{shown}", s.name);
            let before = record
                .map(|r| redact(&r.compose, &variables))
                .unwrap_or_default();
            let diff = similar::TextDiff::from_lines(&before, &shown);
            let _ = writeln!(
                self.out,
                "--- diff against the last deployment ---\n{}",
                diff.unified_diff().header("deployed", "rendered")
            );
            self.say(&format!(
                "would run: docker stack deploy --prune --resolve-image never -c - {} (the compose above on stdin)",
                s.name
            ));
            return Ok(false);
        }
        log::info!("{}: deploying ({why}), sha256 {sha256}", s.what());
        self.d.stack_deploy(&s.name, &text)?;
        self.changes += 1;
        converge::wait(
            self.d,
            &s.name,
            &services,
            Duration::from_secs(self.config.deploy.converge_timeout_secs),
        )
        .with_context(|| s.what())?;
        let deployed_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        state::store(
            &self.config.state_dir,
            &s.key,
            &state::Record {
                name: s.name.clone(),
                sha256,
                deployed_at,
                compose: text,
            },
        )?;
        self.say(&format!(
            "{}: deployed, {} service(s) running",
            s.what(),
            services.len()
        ));
        Ok(true)
    }

    /// Remove versions of the host secrets this run made that are not
    /// the current ones; one still in use stays.
    fn remove_stale(&mut self) -> Result<()> {
        let current: Vec<(&str, &str)> = self
            .made
            .iter()
            .map(|(version, logical)| (logical.as_str(), version.as_str()))
            .collect();
        // Only ours: a secret of the logical name itself may be the
        // operator's, made by hand.
        let stale: Vec<String> = older_versions(&self.existing, &current, false)
            .into_iter()
            .filter(|name| !self.made.contains_key(*name))
            .map(String::from)
            .collect();
        for name in stale {
            if self.dry_run {
                self.say(&format!(
                    "would run: docker secret rm {name} (if no service uses it)"
                ));
                continue;
            }
            match self.d.secret_rm(&name)? {
                Removed::Yes => {
                    self.changes += 1;
                    self.say(&format!("removed old swarm secret {name}"));
                }
                Removed::InUse(why) => log::info!("old swarm secret {name} kept: {why}"),
            }
        }
        Ok(())
    }
}

/// `text` with the values of variables whose names say they are secret
/// (PASS, SECRET, TOKEN, KEY) replaced, for display.
pub fn redact(text: &str, variables: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (name, value) in variables {
        let upper = name.to_ascii_uppercase();
        let secret = ["PASS", "SECRET", "TOKEN", "KEY"]
            .iter()
            .any(|w| upper.contains(w));
        if secret && !value.is_empty() {
            let mark = format!("<redacted {name}>");
            out = out
                .replace(&value.replace('$', "$$"), &mark)
                .replace(value, &mark);
        }
    }
    out
}

/// Read and parse a stack's compose file: a missing or unreadable file
/// or bad YAML is a configuration error naming it.
pub fn load_compose(s: &StackPlan) -> Result<Compose> {
    let bytes = guestdir::read_file(&s.compose_path, COMPOSE_LIMIT).map_err(|e| {
        err(
            Kind::Config,
            format!(
                "{}: cannot read compose file '{}': {e}",
                s.what(),
                s.compose_path.display()
            ),
        )
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        err(
            Kind::Config,
            format!(
                "{}: compose file '{}' is not UTF-8",
                s.what(),
                s.compose_path.display()
            ),
        )
    })?;
    let variables = s.variables();
    Compose::parse(&s.compose_path, &text, &variables)
        .map_err(|e| err(kind_of(&e), format!("{}: {e:#}", s.what())))
}

/// The manager VM, reachable, an active manager: else 75.
fn manager<'a>(
    config: &Config,
    px: &'a crate::proxmox::Proxmox,
    plan: &Plan,
) -> Result<Docker<'a>> {
    let guest = Guest {
        kind: GuestType::Vm,
        id: plan.manager.vmid,
    };
    px.wait_reachable(guest, Duration::from_secs(config.swarm.agent_timeout_secs))?;
    let d = Docker::new(px, guest, plan.manager.what());
    let info = d
        .info()
        .map_err(|e| err(Kind::TempFail, format!("{e:#}")))?;
    if info.state != NodeState::Active || !info.control {
        return Err(err(
            Kind::TempFail,
            format!(
                "{} is not an active swarm manager (state {}): nothing can be deployed; \
                 phoenix-swarm ensure comes first",
                plan.manager.what(),
                info.state
            ),
        ));
    }
    Ok(d)
}

/// `phoenix-deploy run`: one run at a time (the `deploy` lock; a dry run
/// takes none). Progress and changes go to `out`.
pub fn run(config: &Config, opts: &RunOptions, out: &mut dyn Write) -> Result<()> {
    let plan = plan::build(config, opts.only.as_deref())?;
    let _lock = if opts.dry_run {
        None
    } else {
        Some(cluster::lock(
            config,
            "deploy",
            Duration::from_secs(config.deploy.lock_wait_secs),
        )?)
    };
    if opts.dry_run {
        return run_plan(config, opts, out, &plan);
    }
    let started = std::time::Instant::now();
    let result = run_plan(config, opts, out, &plan);
    // Under the lock still: the run, and when each stack last converged.
    let stacks: Vec<_> = plan
        .stacks
        .iter()
        .filter_map(|s| {
            let rec = state::load(&config.state_dir, &s.key)?;
            Some((vec![("stack", rec.name)], rec.deployed_at as f64))
        })
        .collect();
    crate::metrics::record(
        &config.state_dir,
        config.deploy.metrics_file.as_deref(),
        "deploy",
        &result,
        started.elapsed(),
        &crate::metrics::family(
            "phoenix_deploy_stack_converged_seconds",
            "When the stack last converged after a deployment, Unix time.",
            &stacks,
        ),
    );
    result
}

/// The run proper, under the lock (or a dry run without it).
fn run_plan(
    config: &Config,
    opts: &RunOptions,
    out: &mut dyn Write,
    plan: &plan::Plan,
) -> Result<()> {
    // Every compose file first: a broken one is reported before anything
    // changes, and the others still go.
    let mut errors = Vec::new();
    let mut ready = Vec::new();
    for s in &plan.stacks {
        match load_compose(s) {
            Ok(c) => ready.push((s, c)),
            Err(e) => errors.push(e),
        }
    }
    if ready.is_empty() && !errors.is_empty() {
        // Nothing can be deployed: the manager is not even asked.
        return combine(errors);
    }
    let mut declared = Vec::new();
    for (name, src) in &config.deploy.secrets {
        check_secret_name(name)
            .map_err(|why| err(Kind::Config, format!("deploy.secrets: the name {why}")))?;
        declared.push(HostSecret::read(
            name,
            &src.file,
            &format!("deploy.secrets.{name}.file"),
        )?);
    }
    let px = crate::swarm::proxmox(config)?;
    let d = manager(config, &px, plan)?;
    let mut run = Run {
        config,
        d: &d,
        dry_run: opts.dry_run,
        out,
        existing: d.secret_ls()?,
        made: BTreeMap::new(),
        changes: 0,
    };
    run.ensure_networks()?;
    let mut names = BTreeMap::new();
    for s in &declared {
        run.ensure_secret(s)?;
        names.insert(s.logical.clone(), s.version.clone());
    }
    let mut deployed = 0;
    for (s, compose) in &ready {
        signal::check()?;
        match run.stack(s, compose, &names) {
            Ok(true) => deployed += 1,
            Ok(false) => {}
            Err(e) => errors.push(e),
        }
    }
    signal::check()?;
    if let Err(e) = run.remove_stale() {
        errors.push(e);
    }
    let summary = match (opts.dry_run, run.changes) {
        (true, _) => "dry run: nothing changed".to_string(),
        (false, 0) => "no change".to_string(),
        (false, n) => format!("{deployed} stack(s) deployed, {n} change(s)"),
    };
    run.say(&summary);
    combine(errors)
}

/// One error as it is; several folded into one, of the worst kind:
/// configuration (2), then failure (1), then temporary (75).
fn combine(mut errors: Vec<anyhow::Error>) -> Result<()> {
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        n => {
            let kinds: Vec<Kind> = errors.iter().map(kind_of).collect();
            let kind = if kinds.contains(&Kind::Config) {
                Kind::Config
            } else if kinds
                .iter()
                .all(|k| matches!(k, Kind::TempFail | Kind::Timeout))
            {
                Kind::TempFail
            } else {
                Kind::Failed
            };
            let lines: Vec<String> = errors.iter().map(|e| format!("  {e:#}")).collect();
            Err(err(
                kind,
                format!("{n} stacks failed:\n{}", lines.join("\n")),
            ))
        }
    }
}

/// `phoenix-deploy status`: read once, change nothing.
pub fn status(config: &Config) -> Result<DeployStatus> {
    let plan = plan::build(config, None)?;
    let px = crate::swarm::proxmox(config)?;
    let d = manager(config, &px, &plan)?;
    let mut st = status::read(config, &d, &plan)?;
    let where_ = cluster::Cluster::load(config)?;
    if where_.clustered {
        for s in &mut st.stacks {
            s.pve_node = where_.node_of(s.vmid);
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_variables_are_redacted_for_display() {
        let vars = vec![
            ("DATABASE_PASS".to_string(), "PROD$SECRET".to_string()),
            ("API_PORT".to_string(), "8000".to_string()),
        ];
        let shown = redact("A: PROD$$SECRET\nB: 8000\n", &vars);
        assert_eq!(shown, "A: <redacted DATABASE_PASS>\nB: 8000\n");
    }

    #[test]
    fn the_worst_kind_wins() {
        let e = combine(vec![
            err(Kind::TempFail, "a"),
            err(Kind::Config, "b"),
            err(Kind::Failed, "c"),
        ])
        .unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config);
        let e = combine(vec![err(Kind::TempFail, "a"), err(Kind::Failed, "c")]).unwrap_err();
        assert_eq!(kind_of(&e), Kind::Failed);
        let e = combine(vec![err(Kind::TempFail, "a"), err(Kind::TempFail, "c")]).unwrap_err();
        assert_eq!(kind_of(&e), Kind::TempFail);
    }
}
