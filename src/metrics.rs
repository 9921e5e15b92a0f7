//! node_exporter textfile metrics of a job's runs (`phoenix-swarm
//! ensure`, `phoenix-deploy run`): when each ended, how, how long it took,
//! and when one last succeeded, kept in `<state_dir>/<job>-run.json` and
//! written atomically (0644) to the job's `metrics_file` when that file's
//! directory exists (node_exporter's textfile collector reads it). A run
//! records itself under its own lock, so two runs never interleave their
//! records. `phoenix-renew` writes its own, richer file the same way.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::exit::kind_of;
use crate::fsutil::{self, FileOptions};

/// How a job's runs went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// When the last run ended, Unix seconds.
    pub finished: i64,
    /// Its exit status.
    pub exit_code: u8,
    /// How long it took, seconds.
    pub duration_secs: f64,
    /// When a run last ended with exit 0, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<i64>,
}

/// Largest record read back.
const RECORD_LIMIT: u64 = 64 << 10;

fn record_path(state_dir: &Path, job: &str) -> PathBuf {
    state_dir.join(format!("{job}-run.json"))
}

/// The last record of `job`, if any.
pub fn load(state_dir: &Path, job: &str) -> Option<JobRecord> {
    let bytes = fsutil::read_limited(&record_path(state_dir, job), RECORD_LIMIT).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Unix seconds now.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Record how a run of `job` (`swarm`, `deploy`) ended and write the
/// metrics file, with `extra` lines (already in the text format) after
/// the run's. Neither can change the run's result: a failure is a
/// warning.
pub fn record(
    state_dir: &Path,
    metrics_file: Option<&Path>,
    job: &str,
    result: &anyhow::Result<()>,
    took: Duration,
    extra: &str,
) {
    let t = now();
    let previous = load(state_dir, job).unwrap_or_default();
    let rec = JobRecord {
        finished: t,
        exit_code: exit_code(result),
        duration_secs: took.as_secs_f64(),
        last_success: if result.is_ok() {
            Some(t)
        } else {
            previous.last_success
        },
    };
    let saved = std::fs::create_dir_all(state_dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(serde_json::to_vec_pretty(&rec)?))
        .and_then(|bytes| {
            fsutil::write_atomic(
                &record_path(state_dir, job),
                &bytes,
                FileOptions::mode(0o644),
            )
        });
    if let Err(e) = saved {
        log::warn!("recording the {job} run: {e:#}");
    }
    if let Some(path) = metrics_file {
        write_textfile(path, || Ok(text(job, &rec) + extra));
    }
}

/// The exit status a run's result gives.
pub fn exit_code(result: &anyhow::Result<()>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(e) => kind_of(e).code(),
    }
}

/// Write a run's metrics (`text` makes them) to `path` atomically (0644:
/// the exporter reads it), when its directory exists (node_exporter's
/// textfile collector is installed; otherwise `text` is not even called);
/// a failure is a warning, never the run's.
pub fn write_textfile(path: &Path, text: impl FnOnce() -> anyhow::Result<String>) {
    if !path.parent().is_some_and(Path::is_dir) {
        log::debug!(
            "not writing metrics: no directory for '{}' (node_exporter's textfile collector)",
            path.display()
        );
        return;
    }
    let written =
        text().and_then(|t| fsutil::write_atomic(path, t.as_bytes(), FileOptions::mode(0o644)));
    if let Err(e) = written {
        log::warn!("writing metrics '{}': {e:#}", path.display());
    }
}

/// One unlabelled gauge, its HELP and TYPE lines first; nothing when
/// there is no value.
pub fn gauge(out: &mut String, name: &str, help: &str, value: Option<f64>) {
    if let Some(v) = value {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
}

/// A label value escaped as the text format wants it.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The run's gauges, `phoenix_<job>_...`.
pub fn text(job: &str, rec: &JobRecord) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: Option<f64>| {
        gauge(&mut out, &format!("phoenix_{job}_{name}"), help, v)
    };
    gauge(
        "last_run_seconds",
        "When the last run ended, Unix time.",
        Some(rec.finished as f64),
    );
    gauge(
        "last_run_exit_code",
        "Exit status of the last run (0 good, 75 temporary: retried).",
        Some(f64::from(rec.exit_code)),
    );
    gauge(
        "last_run_duration_seconds",
        "How long the last run took.",
        Some(rec.duration_secs),
    );
    gauge(
        "last_success_seconds",
        "When a run last ended well, Unix time.",
        rec.last_success.map(|t| t as f64),
    );
    out
}

/// One labelled gauge family, for `extra`.
pub fn family(name: &str, help: &str, samples: &[(Vec<(&str, String)>, f64)]) -> String {
    let mut out = format!("# HELP {name} {help}\n# TYPE {name} gauge\n");
    for (labels, v) in samples {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let _ = writeln!(out, "{name}{{{}}} {v}", labels.join(","));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_recorded_and_its_metrics_written_only_where_the_exporter_reads() {
        let d = tempfile::tempdir().unwrap();
        let prom = d.path().join("textfile/phoenix-swarm.prom");
        let ok: anyhow::Result<()> = Ok(());
        record(
            d.path(),
            Some(&prom),
            "swarm",
            &ok,
            Duration::from_millis(1500),
            "",
        );
        assert!(!prom.exists(), "written without the collector's directory");
        let first = load(d.path(), "swarm").unwrap();
        assert_eq!(first.exit_code, 0);
        assert_eq!(first.last_success, Some(first.finished));

        std::fs::create_dir(prom.parent().unwrap()).unwrap();
        let failed: anyhow::Result<()> = Err(crate::exit::err(
            crate::exit::Kind::TempFail,
            "manager not ready",
        ));
        let extra = family(
            "phoenix_swarm_x",
            "x.",
            &[(vec![("vm", "1001".into())], 1.0)],
        );
        record(
            d.path(),
            Some(&prom),
            "swarm",
            &failed,
            Duration::from_secs(2),
            &extra,
        );
        let text = std::fs::read_to_string(&prom).unwrap();
        assert!(
            text.contains("\nphoenix_swarm_last_run_exit_code 75\n"),
            "{text}"
        );
        // The last success is the earlier run's, kept.
        assert!(
            text.contains(&format!(
                "\nphoenix_swarm_last_success_seconds {}\n",
                first.finished
            )),
            "{text}"
        );
        assert!(text.ends_with("phoenix_swarm_x{vm=\"1001\"} 1\n"), "{text}");
    }
}
