//! `phoenix-renew status`: every certificate's expiry, the share of its
//! lifetime used, what the next run will do and how the last one went; as
//! a table, as JSON, and as node_exporter textfile metrics (written
//! atomically, so the exporter never scrapes half a file).
//!
//! An entry the manifest check refuses is a row too (next action
//! `refused`, its error beside it), in manifest order: the status of the
//! others is still shown (and the metrics written), then the command
//! exits 2 naming it, as `run` does.
//!
//! Each row names the node its guest runs on (pmxcfs's `.vmlist`; this
//! node on a host without one): on a cluster every node shows every
//! certificate, and the node named is the one whose runs handle it. A
//! certificate whose guest is on no node fails the status, as it fails
//! the runs.

use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;

use crate::config::Config;
use crate::fsutil::{self, FileOptions};
use crate::metrics;

use super::state::{Outcome, RunRecord, State};
use super::{load_root, manifest, now, plan};

/// One certificate's line of the status.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Common name.
    pub name: String,
    /// `CT 101`, `VM 1001`.
    pub guest: String,
    /// The node its guest runs on (`null`: on no node of the cluster, or
    /// not known).
    pub node: Option<String>,
    /// Certificate file.
    pub cert_path: String,
    /// Serial of the current certificate.
    pub serial: Option<String>,
    /// Expiry, Unix seconds.
    pub not_after: Option<i64>,
    /// Seconds left (negative: expired).
    pub seconds_left: Option<i64>,
    /// Share of the lifetime used, percent.
    pub lifetime_used_percent: Option<f64>,
    /// What the next run will do: nothing, renew, issue, deferred.
    pub next_action: String,
    /// Why.
    pub reason: String,
    /// How the last run went.
    pub last_result: Option<Outcome>,
    /// Last time a run left it good, Unix seconds.
    pub last_success: Option<i64>,
    /// Consecutive failures.
    pub failures: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// The post-renewal action of the installed pair has not succeeded
    /// yet: the next run tries it again (the certificate is not held back
    /// for it).
    pub post_pending: bool,
    /// The pending delivery and action wait for the guest, not running
    /// (its state), since this Unix time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for_guest: Option<Waiting>,
    /// What the plan warns of (a legacy command that cannot work, ...).
    pub warnings: Vec<String>,
    /// Why the manifest check refused the entry (`next_action` is then
    /// `refused`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A pending action waiting for its guest.
#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    /// The guest's state (`stopped`, ...).
    pub state: String,
    /// Since when, Unix seconds.
    pub since: i64,
}

/// RFC 3339 time of Unix seconds.
pub fn time(t: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)).to_string()
}

/// Everything `status` shows: the rows, whether the CA's root could be
/// read, and how the last run ended.
#[derive(Debug, Clone)]
pub struct Report {
    /// One per manifest entry, in manifest order.
    pub rows: Vec<Row>,
    /// Why the CA's root certificate cannot be read (the CA state not
    /// mounted, say): the certificates are then judged by what their own
    /// files say, and none counts as checked against the root.
    pub ca_root_error: Option<String>,
    /// The last run that took the lock.
    pub last_run: Option<RunRecord>,
    /// `renewal.pending_max_secs`.
    pub pending_max_secs: u64,
    /// Where the guests run is known (a row without a node: its guest is
    /// on no node of the cluster).
    pub nodes_known: bool,
    /// The bash managers still installed ([`super::retire`]).
    pub retire: Vec<String>,
}

impl Report {
    /// Log what the operator must hear of: the bash managers still
    /// installed, and each entry's warnings. `status` does; a run's own
    /// metrics rewrite does not (the run said them already).
    pub fn log_warnings(&self) {
        for w in &self.retire {
            log::warn!("{w}");
        }
        for r in &self.rows {
            for w in &r.warnings {
                log::warn!("{}: {w}", r.name);
            }
        }
    }
}

/// Compute the report. Only an unreadable manifest fails it: monitoring
/// keeps its rows exactly when the CA's storage is gone.
pub fn report(config: &Config) -> Result<Report> {
    let (rows, ca_root_error, nodes_known) = rows_and_root(config)?;
    Ok(Report {
        rows,
        ca_root_error,
        nodes_known,
        last_run: State::load(&config.state_dir).last_run,
        pending_max_secs: config.renewal.pending_max_secs,
        retire: super::retire::warnings(config),
    })
}

/// The rows, why the CA's root could not be read, and whether where the
/// guests run is known.
fn rows_and_root(config: &Config) -> Result<(Vec<Row>, Option<String>, bool)> {
    let m = manifest::load(config)?;
    let mut state = State::load(&config.state_dir);
    let now = now();
    state.cap_backoffs(now);
    let entries: Vec<_> = m.entries.iter().collect();
    let cluster = match crate::cluster::Cluster::load(config) {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("where the guests run is not known: {e:#}");
            None
        }
    };
    let node_of = |id: u32| cluster.as_ref().and_then(|c| c.node_of(id));
    // Refused entries need no root: a manifest of only those is shown
    // even while the CA state is not there.
    let mut root_error = None;
    let planned = if entries.is_empty() {
        Vec::new()
    } else {
        let root = load_root(config).unwrap_or_else(|e| {
            root_error = Some(format!("{e:#}"));
            crate::cert::Root::unreadable()
        });
        plan::plan(
            &entries,
            &root,
            &state,
            now,
            config.renewal.threshold,
            config.renewal.spread_secs,
            plan::Urge::Due,
        )
    };
    let last = |name: &str| state.certificates.get(name).cloned().unwrap_or_default();
    let refused = m.bad.iter().map(|b| {
        let st = last(&b.name);
        let row = Row {
            name: b.name.clone(),
            guest: b.guest.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
            node: b.guest.and_then(|g| node_of(g.id)),
            cert_path: b
                .cert_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "-".into()),
            serial: None,
            not_after: None,
            seconds_left: None,
            lifetime_used_percent: None,
            next_action: "refused".into(),
            reason: "refused by the manifest check".into(),
            last_result: st.last_result,
            last_success: st.last_success,
            failures: st.failures,
            post_pending: st.post_pending,
            waiting_for_guest: waiting(&st),
            last_error: st.last_error,
            warnings: Vec::new(),
            error: Some(b.error.clone()),
        };
        (b.index, row)
    });
    let mut rows: Vec<(usize, Row)> = entries
        .iter()
        .zip(&planned)
        .map(|(e, p)| {
            let st = last(&e.name);
            let cur = p.assessment.current.as_ref();
            let mut warnings = e.warnings.clone();
            let node = node_of(e.guest.id);
            if node.is_none() && cluster.is_some() {
                warnings.push(format!(
                    "{} is on no node of the cluster (not in .vmlist): no run handles it",
                    e.guest
                ));
            }
            let row = Row {
                name: e.name.clone(),
                guest: e.guest.to_string(),
                node,
                cert_path: e.cert_path.display().to_string(),
                serial: cur.map(|c| c.serial.clone()),
                not_after: cur.map(|c| c.not_after),
                seconds_left: cur.map(|c| c.not_after - now),
                lifetime_used_percent: cur.map(|c| {
                    let life = (c.not_after - c.not_before).max(1) as f64;
                    (((now - c.not_before) as f64 / life) * 1000.0).round() / 10.0
                }),
                next_action: match p.deferred_until {
                    Some(_) => "deferred".into(),
                    None => p.action().to_string(),
                },
                reason: match p.deferred_until {
                    Some(t) => format!("{} (backoff until {})", p.assessment.reason, time(t)),
                    None => p.assessment.reason.clone(),
                },
                last_result: st.last_result,
                last_success: st.last_success,
                failures: st.failures,
                post_pending: st.post_pending,
                waiting_for_guest: waiting(&st),
                last_error: st.last_error,
                warnings,
                error: None,
            };
            (e.index, row)
        })
        .chain(refused)
        .collect();
    rows.sort_by_key(|(i, _)| *i);
    let mut rows: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect();
    if let Some(e) = &root_error {
        // Nothing can be judged against the root: what the files say
        // (expiry, SANs) is shown, the next action is not known.
        for r in rows.iter_mut().filter(|r| r.error.is_none()) {
            if r.serial.is_some() {
                r.next_action = "unknown".into();
                r.reason = format!("the CA's root cannot be read: {e}");
            }
        }
    }
    Ok((rows, root_error, cluster.is_some()))
}

/// What is wrong, for `status`'s exit: 2 when the manifest check refused
/// an entry; 1 when a certificate is missing, expired, failed its last
/// attempt, or has waited for its guest as long as
/// `renewal.pending_max_secs` allows; 75 when only the CA's root cannot be
/// read (its storage not there yet); else 0. Each problem is logged.
pub fn verdict(report: &Report, now: i64) -> Result<()> {
    refused(&report.rows)?;
    let mut bad = Vec::new();
    for r in &report.rows {
        let why = if report.nodes_known && r.node.is_none() && r.error.is_none() {
            Some(format!(
                "{} is on no node of the cluster: no run handles it",
                r.guest
            ))
        } else if r.serial.is_none() {
            Some("missing or unreadable".to_string())
        } else if r.seconds_left.is_some_and(|s| s <= 0) {
            Some("expired".to_string())
        } else if r.last_result == Some(Outcome::Failed) || r.failures > 0 {
            Some(format!(
                "failed ({})",
                r.last_error.as_deref().unwrap_or("see the journal")
            ))
        } else {
            r.waiting_for_guest
                .as_ref()
                .filter(|w| now - w.since >= report.pending_max_secs as i64)
                .map(|w| {
                    format!(
                        "its action has waited for {} ({}) since {}",
                        r.guest,
                        w.state,
                        time(w.since)
                    )
                })
        };
        if let Some(why) = why {
            log::error!("{}: {why}", r.name);
            bad.push(r.name.as_str());
        }
    }
    if !bad.is_empty() {
        return Err(crate::exit::err(
            crate::exit::Kind::Failed,
            format!(
                "{} of {} certificate(s) not good: {}",
                bad.len(),
                report.rows.len(),
                bad.join(", ")
            ),
        ));
    }
    if let Some(e) = &report.ca_root_error {
        return Err(crate::exit::err(
            crate::exit::Kind::TempFail,
            format!(
                "the CA's root cannot be read, the certificates are not checked against it: {e}"
            ),
        ));
    }
    Ok(())
}

/// The table, then the CA and the last run.
pub fn report_table(report: &Report) -> String {
    let mut out = table(&report.rows);
    if let Some(e) = &report.ca_root_error {
        let _ = writeln!(out, "\nCA: the root certificate cannot be read: {e}");
    }
    if let Some(run) = &report.last_run {
        let _ = writeln!(
            out,
            "\nlast run: {} exit {}{}",
            time(run.finished),
            run.exit_code,
            run.error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        if let Some(since) = run.ca_unavailable_since {
            let _ = writeln!(out, "CA unavailable to the runs since {}", time(since));
        }
    }
    out
}

/// Rows, the CA and the last run as node_exporter textfile metrics.
pub fn report_prometheus(report: &Report) -> String {
    let mut out = prometheus(&report.rows);
    let mut gauge =
        |name: &str, help: &str, v: Option<f64>| metrics::gauge(&mut out, name, help, v);
    gauge(
        "phoenix_renew_ca_root_readable",
        "1 when the CA's root certificate could be read (its storage is there).",
        Some(if report.ca_root_error.is_none() {
            1.0
        } else {
            0.0
        }),
    );
    let run = report.last_run.as_ref();
    gauge(
        "phoenix_renew_last_run_seconds",
        "When the last renewal run ended, Unix time.",
        run.map(|r| r.finished as f64),
    );
    gauge(
        "phoenix_renew_last_run_exit_code",
        "Exit status of the last renewal run (0 good, 1 a certificate failed, 2 configuration, 75 CA unavailable or lock held).",
        run.map(|r| f64::from(r.exit_code)),
    );
    gauge(
        "phoenix_renew_ca_unavailable",
        "1 when the last renewal run found the CA unreachable, unavailable or not ready.",
        run.map(|r| {
            if r.ca_unavailable_since.is_some() {
                1.0
            } else {
                0.0
            }
        }),
    );
    gauge(
        "phoenix_renew_ca_unavailable_since_seconds",
        "Since when the renewal runs find the CA unavailable, Unix time.",
        run.and_then(|r| r.ca_unavailable_since).map(|t| t as f64),
    );
    out
}

fn waiting(st: &super::state::EntryState) -> Option<Waiting> {
    Some(Waiting {
        state: st.waiting_for.clone()?,
        since: st.waiting_since?,
    })
}

/// `Err` (exit 2) naming the rows the manifest check refused, each error
/// logged; `Ok` when there is none.
pub fn refused(rows: &[Row]) -> Result<()> {
    let names: Vec<&str> = rows
        .iter()
        .filter_map(|r| {
            let e = r.error.as_ref()?;
            log::error!("{}: refused: {e}", r.name);
            Some(r.name.as_str())
        })
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    Err(crate::exit::err(
        crate::exit::Kind::Config,
        format!(
            "{} of {} refused by the manifest check (fix the manifest): {}",
            names.len(),
            rows.len(),
            names.join(", ")
        ),
    ))
}

fn left(secs: i64) -> String {
    if secs < 0 {
        return "expired".into();
    }
    let (d, h, m) = (secs / 86400, secs % 86400 / 3600, secs % 3600 / 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else {
        format!("{m}m")
    }
}

/// The table.
pub fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<38} {:<8} {:<10} {:<20} {:>7} {:>6} {:<8} {}\n",
        "NAME", "GUEST", "NODE", "NOT AFTER", "LEFT", "USED", "NEXT", "LAST"
    );
    for r in rows {
        let last = match (&r.last_result, r.failures) {
            (Some(Outcome::Failed), n) => format!("failed x{n}"),
            (Some(o), _) => serde_json::to_value(o)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<38} {:<8} {:<10} {:<20} {:>7} {:>6} {:<8} {}",
            r.name,
            r.guest,
            r.node.as_deref().unwrap_or("-"),
            r.not_after.map(time).unwrap_or_else(|| "-".into()),
            r.seconds_left.map(left).unwrap_or_else(|| "-".into()),
            r.lifetime_used_percent
                .map(|p| format!("{p:.0}%"))
                .unwrap_or_else(|| "-".into()),
            r.next_action,
            last
        );
    }
    for r in rows {
        for w in &r.warnings {
            let _ = writeln!(out, "\nwarning: {}: {w}", r.name);
        }
    }
    for r in rows {
        if let Some(w) = &r.waiting_for_guest {
            let _ = writeln!(
                out,
                "\npending: {}: {} is {}: delivery and post-renewal action wait for it (since {})",
                r.name,
                r.guest,
                w.state,
                time(w.since)
            );
        } else if r.post_pending {
            let _ = writeln!(
                out,
                "\npending: {}: the post-renewal action has not succeeded yet; the next run tries it",
                r.name
            );
        }
    }
    for r in rows {
        if let Some(e) = &r.error {
            let _ = writeln!(out, "\nrefused: {}: {e}", r.name);
        }
    }
    out
}

/// node_exporter textfile metrics.
pub fn prometheus(rows: &[Row]) -> String {
    let mut out = String::new();
    type Value = dyn Fn(&Row) -> Option<f64>;
    let metrics: [(&str, &str, &Value); 7] = [
        (
            "phoenix_cert_not_after_seconds",
            "Expiry of the certificate, Unix time.",
            &|r| r.not_after.map(|t| t as f64),
        ),
        (
            "phoenix_cert_last_success_seconds",
            "Last time a renewal run left the certificate good, Unix time.",
            &|r| r.last_success.map(|t| t as f64),
        ),
        (
            "phoenix_cert_renewal_failures",
            "Consecutive failed renewal attempts.",
            &|r| Some(r.failures as f64),
        ),
        (
            "phoenix_cert_renewal_due",
            "1 when the next run will issue or renew the certificate.",
            &|r| Some(if r.next_action == "nothing" { 0.0 } else { 1.0 }),
        ),
        (
            "phoenix_cert_post_pending",
            "1 when the post-renewal action (and delivery) of the installed pair has not succeeded yet.",
            &|r| Some(if r.post_pending { 1.0 } else { 0.0 }),
        ),
        (
            "phoenix_cert_waiting_for_guest_since_seconds",
            "Since when the pending action waits for its guest, not running, Unix time.",
            &|r| r.waiting_for_guest.as_ref().map(|w| w.since as f64),
        ),
        (
            "phoenix_cert_manifest_refused",
            "1 when the manifest check refuses the entry: it is not renewed.",
            &|r| Some(if r.error.is_some() { 1.0 } else { 0.0 }),
        ),
    ];
    for (name, help, value) in metrics {
        let samples: Vec<_> = rows
            .iter()
            .filter_map(|r| {
                let labels = vec![("name", r.name.clone()), ("guest", r.guest.clone())];
                Some((labels, value(r)?))
            })
            .collect();
        out.push_str(&metrics::family(name, help, &samples));
    }
    out
}

/// Write the metrics to `path` atomically (0644: the exporter reads it).
pub fn write_prometheus(path: &Path, report: &Report) -> Result<()> {
    fsutil::write_atomic(
        path,
        report_prometheus(report).as_bytes(),
        FileOptions::mode(0o644),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_labelled_and_escaped() {
        let r = Row {
            name: "a\"b".into(),
            guest: "CT 101".into(),
            node: Some("pve1".into()),
            cert_path: "/x".into(),
            serial: None,
            not_after: Some(100),
            seconds_left: Some(10),
            lifetime_used_percent: Some(50.0),
            next_action: "nothing".into(),
            reason: "valid".into(),
            last_result: None,
            last_success: None,
            failures: 2,
            post_pending: false,
            waiting_for_guest: None,
            last_error: None,
            warnings: Vec::new(),
            error: None,
        };
        let text = prometheus(std::slice::from_ref(&r));
        assert!(
            text.contains("phoenix_cert_not_after_seconds{name=\"a\\\"b\",guest=\"CT 101\"} 100\n"),
            "{text}"
        );
        assert!(
            text.contains("phoenix_cert_renewal_failures{name=\"a\\\"b\",guest=\"CT 101\"} 2\n"),
            "{text}"
        );
        assert!(!text.contains("last_success_seconds{"), "{text}");
        let t = table(&[
            Row {
                seconds_left: Some(600),
                ..r
            },
            row(),
        ]);
        assert!(t.lines().nth(1).unwrap().contains(" 10m "), "{t}");
        assert!(t.lines().nth(1).unwrap().contains(" pve1 "), "{t}");
        assert!(t.lines().nth(2).unwrap().contains(" issue "), "{t}");
        assert!(t.ends_with("\nwarning: n: cannot rotate\n"), "{t}");
    }

    #[test]
    fn a_refused_entry_is_a_row_with_its_error_and_fails_the_status() {
        let bad = Row {
            next_action: "refused".into(),
            warnings: Vec::new(),
            error: Some("[1].owner ('n'): no user 'x' on this host".into()),
            ..row()
        };
        let t = table(std::slice::from_ref(&bad));
        assert!(t.lines().nth(1).unwrap().contains(" refused "), "{t}");
        assert!(
            t.ends_with("\nrefused: n: [1].owner ('n'): no user 'x' on this host\n"),
            "{t}"
        );
        let m = prometheus(std::slice::from_ref(&bad));
        assert!(
            m.contains("phoenix_cert_manifest_refused{name=\"n\",guest=\"VM 1\"} 1\n"),
            "{m}"
        );
        let e = refused(&[row(), bad]).unwrap_err();
        assert_eq!(crate::exit::kind_of(&e), crate::exit::Kind::Config);
        assert!(e.to_string().contains("1 of 2 refused"), "{e}");
        assert!(refused(&[row()]).is_ok());
    }

    fn row() -> Row {
        Row {
            name: "n".into(),
            guest: "VM 1".into(),
            node: None,
            cert_path: "/x".into(),
            serial: None,
            not_after: None,
            seconds_left: None,
            lifetime_used_percent: None,
            next_action: "issue".into(),
            reason: "certificate missing".into(),
            last_result: None,
            last_success: None,
            failures: 0,
            post_pending: false,
            waiting_for_guest: None,
            last_error: None,
            warnings: vec!["cannot rotate".into()],
            error: None,
        }
    }
}
