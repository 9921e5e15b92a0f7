//! Docker secrets and services inside the manager VM, through the one
//! docker layer ([`Docker`]): the commands a secret rotation needs, and
//! parsers of what they print.
//!
//! Facts relied on (moby/swarmkit, docker/cli 20.10):
//! - A secret's data never changes, and a secret in use cannot be removed
//!   (`secret 'X' is in use by the following service: S`): new content is
//!   a new secret, swapped into each service by one `service update`.
//! - `docker service update` resets the service's `UpdateStatus` to null
//!   (swarmkit `controlapi.UpdateService`); the updater then sets
//!   `updating`, and `completed` once every task is replaced and past its
//!   monitor period; `paused` when a new task failed (the default
//!   `FailureAction`), `rollback_*` when the service rolls itself back.
//! - `--no-resolve-image`: an update that swaps secrets must not also move
//!   the service to whatever image its tag points at today.
//! - Secret bytes go on stdin (`docker secret create NAME -`), never argv.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::docker::{clip, json_lines, Docker};

/// moby's answer when a secret name is taken.
const ERR_EXISTS: &str = "already exists";
/// moby's answer when the secret to remove is used by a service.
const ERR_IN_USE: &str = "is in use by the following service";
/// docker/cli's answer for an unknown service.
const ERR_NO_SERVICE: &str = "no such service";
/// docker/cli's answer when the secret to remove is gone already
/// ("Error: No such secret: X", docker.io 20.10).
const ERR_NO_SECRET: &str = "No such secret";

/// One line of `docker secret ls --format '{{json .}}'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEntry {
    /// Secret id.
    pub id: String,
    /// Secret name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawSecretLine {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
    /// `k=v,k2=v2` (the CLI's table column).
    #[serde(rename = "Labels", default)]
    labels: String,
}

/// Parse `docker secret ls --format '{{json .}}'`.
pub fn parse_secret_ls(stdout: &str) -> Result<Vec<SecretEntry>> {
    let raw: Vec<RawSecretLine> = json_lines(stdout, "docker secret ls", "a secret")?;
    Ok(raw
        .into_iter()
        .map(|raw| SecretEntry {
            labels: raw
                .labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            id: raw.id,
            name: raw.name,
        })
        .collect())
}

/// A secret a service mounts (`Spec.TaskTemplate.ContainerSpec.Secrets[]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SecretRef {
    /// The secret's name.
    #[serde(rename = "SecretName")]
    pub secret_name: String,
    /// Where and how it appears in the container.
    #[serde(rename = "File", default)]
    pub file: Option<SecretFile>,
}

/// The file a secret becomes in a container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SecretFile {
    /// Its name under `/run/secrets/` (the target).
    #[serde(rename = "Name")]
    pub name: String,
    /// Owner uid, as text.
    #[serde(rename = "UID", default)]
    pub uid: String,
    /// Owner gid, as text.
    #[serde(rename = "GID", default)]
    pub gid: String,
    /// Mode bits.
    #[serde(rename = "Mode", default)]
    pub mode: u32,
}

/// `UpdateStatus` of a service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UpdateStatus {
    /// `updating`, `paused`, `completed`, `rollback_started`,
    /// `rollback_paused`, `rollback_completed`.
    #[serde(rename = "State", default)]
    pub state: String,
    /// When the update started.
    #[serde(rename = "StartedAt", default)]
    pub started_at: Option<String>,
    /// Swarm's words about it.
    #[serde(rename = "Message", default)]
    pub message: String,
}

/// What a rotation needs to know of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Service id.
    pub id: String,
    /// Service name.
    pub name: String,
    /// The secrets its tasks mount.
    pub secrets: Vec<SecretRef>,
    /// Its last update, if any.
    pub update: Option<UpdateStatus>,
}

#[derive(Deserialize)]
struct RawService {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Spec")]
    spec: RawSpec,
    #[serde(rename = "UpdateStatus", default)]
    update_status: Option<UpdateStatus>,
}

#[derive(Deserialize)]
struct RawSpec {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "TaskTemplate", default)]
    task: Option<RawTask>,
}

#[derive(Deserialize)]
struct RawTask {
    #[serde(rename = "ContainerSpec", default)]
    container: Option<RawContainer>,
}

#[derive(Deserialize)]
struct RawContainer {
    #[serde(rename = "Secrets", default)]
    secrets: Option<Vec<SecretRef>>,
}

/// Parse `docker service inspect --format '{{json .}}' S`.
pub fn parse_service(stdout: &str) -> Result<ServiceInfo> {
    let raw: RawService = serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "docker service inspect printed no service JSON: {}",
            clip(stdout)
        )
    })?;
    Ok(ServiceInfo {
        id: raw.id,
        name: raw.spec.name,
        secrets: raw
            .spec
            .task
            .and_then(|t| t.container)
            .and_then(|c| c.secrets)
            .unwrap_or_default(),
        update: raw.update_status,
    })
}

/// Parse `docker service inspect --format '{{json .UpdateStatus}}' S`
/// (`null` before the updater picked the update up).
pub fn parse_update_status(stdout: &str) -> Result<Option<UpdateStatus>> {
    serde_json::from_str(stdout.trim()).with_context(|| {
        format!(
            "docker service inspect printed no update status JSON: {}",
            clip(stdout)
        )
    })
}

/// One `--secret-add` of a service update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretAdd {
    /// The secret (its versioned name).
    pub source: String,
    /// The file it becomes, owner and mode: the old reference's, so the
    /// container sees the same file.
    pub file: SecretFile,
}

impl SecretAdd {
    /// The `--secret-add` value (docker/cli `opts.SecretOpt`; the mode is
    /// parsed with base 0, so a leading 0 means octal).
    pub fn flag(&self) -> String {
        let mut v = format!("source={},target={}", self.source, self.file.name);
        if !self.file.uid.is_empty() {
            v.push_str(&format!(",uid={}", self.file.uid));
        }
        if !self.file.gid.is_empty() {
            v.push_str(&format!(",gid={}", self.file.gid));
        }
        v.push_str(&format!(",mode=0{:o}", self.file.mode));
        v
    }
}

/// What `docker secret rm` ended in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// Gone (or was already).
    Yes,
    /// A service uses it: moby's message, naming the service.
    InUse(String),
}

impl Docker<'_> {
    /// `docker secret ls`, every secret of the swarm.
    pub fn secret_ls(&self) -> Result<Vec<SecretEntry>> {
        let out = self.run_ok(&["secret", "ls", "--format", "{{json .}}"], false)?;
        parse_secret_ls(&out.stdout).with_context(|| format!("{}: listing secrets", self.what()))
    }

    /// `docker secret create [--label L]... NAME -`, the content on stdin.
    /// A name already taken is fine: names carry the content's digest.
    pub fn secret_create(&self, name: &str, labels: &[String], content: &[u8]) -> Result<()> {
        let mut args = vec!["secret", "create"];
        for l in labels {
            args.extend(["--label", l.as_str()]);
        }
        args.extend([name, "-"]);
        let out = self.run(&args, Some(content))?;
        if out.exitcode == 0 || out.stderr.contains(ERR_EXISTS) {
            return Ok(());
        }
        Err(anyhow::anyhow!(
            "{}: `docker secret create {name} -` exited with status {}: {}",
            self.what(),
            out.exitcode,
            clip(&out.stderr)
        ))
    }

    /// `docker secret rm NAME`; a secret in use is reported, not an error.
    pub fn secret_rm(&self, name: &str) -> Result<Removed> {
        let out = self.run(&["secret", "rm", name], None)?;
        if out.exitcode == 0 {
            return Ok(Removed::Yes);
        }
        if out.stderr.contains(ERR_IN_USE) {
            return Ok(Removed::InUse(clip(&out.stderr)));
        }
        if out.stderr.contains(ERR_NO_SECRET) {
            return Ok(Removed::Yes);
        }
        Err(anyhow::anyhow!(
            "{}: `docker secret rm {name}` exited with status {}: {}",
            self.what(),
            out.exitcode,
            clip(&out.stderr)
        ))
    }

    /// `docker service inspect S`: `None` when there is no such service.
    pub fn service_inspect(&self, service: &str) -> Result<Option<ServiceInfo>> {
        let out = self.run(
            &["service", "inspect", "--format", "{{json .}}", service],
            None,
        )?;
        if out.exitcode != 0 {
            if out.stderr.to_lowercase().contains(ERR_NO_SERVICE) {
                return Ok(None);
            }
            return Err(anyhow::anyhow!(
                "{}: `docker service inspect {service}` exited with status {}: {}",
                self.what(),
                out.exitcode,
                clip(&out.stderr)
            ));
        }
        parse_service(&out.stdout)
            .map(Some)
            .with_context(|| format!("{}: service {service}", self.what()))
    }

    /// The service's `UpdateStatus`.
    pub fn update_status(&self, service: &str) -> Result<Option<UpdateStatus>> {
        let out = self.run_ok(
            &[
                "service",
                "inspect",
                "--format",
                "{{json .UpdateStatus}}",
                service,
            ],
            false,
        )?;
        parse_update_status(&out.stdout)
            .with_context(|| format!("{}: update status of {service}", self.what()))
    }

    /// One `docker service update`: every `remove` out, every `add` in,
    /// so the service rolls once. Detached: the caller waits, bounded.
    pub fn swap_secrets(&self, service: &str, remove: &[String], add: &[SecretAdd]) -> Result<()> {
        let flags: Vec<String> = add.iter().map(SecretAdd::flag).collect();
        let mut args = vec!["service", "update", "--detach", "--no-resolve-image"];
        for r in remove {
            args.extend(["--secret-rm", r.as_str()]);
        }
        for f in &flags {
            args.extend(["--secret-add", f.as_str()]);
        }
        args.push(service);
        self.run_ok(&args, false).map(|_| ())
    }

    /// `docker service rollback --detach S`: back to the previous spec.
    pub fn service_rollback(&self, service: &str) -> Result<()> {
        self.run_ok(&["service", "rollback", "--detach", service], false)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_ls_lines_parse_with_labels() {
        let s = parse_secret_ls(
            "{\"CreatedAt\":\"2 seconds ago\",\"Driver\":\"\",\"ID\":\"vq1\",\"Labels\":\"phoenix.secret=a.pem,phoenix.sha256=ab\",\"Name\":\"a.pem-0123456789ab\",\"UpdatedAt\":\"2 seconds ago\"}\n\
             {\"CreatedAt\":\"9 seconds ago\",\"Driver\":\"\",\"ID\":\"r51\",\"Labels\":\"\",\"Name\":\"a.pem\",\"UpdatedAt\":\"9 seconds ago\"}\n",
        )
        .unwrap();
        assert_eq!(s[0].labels["phoenix.secret"], "a.pem");
        assert!(s[1].labels.is_empty());
        assert!(parse_secret_ls("Error: nope").is_err());
    }

    #[test]
    fn service_inspect_parses_secrets_and_update_status() {
        // Trimmed from a real `docker service inspect --format '{{json .}}'`.
        let svc = parse_service(
            r#"{"ID":"q3","Version":{"Index":31},"Spec":{"Name":"svc","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"local/busybox:1","Secrets":[{"File":{"Name":"s.pem","UID":"0","GID":"0","Mode":292},"SecretID":"vq1","SecretName":"s_v2"}]}}},"UpdateStatus":{"State":"updating","StartedAt":"2026-12-03T12:00:32.472728942Z","Message":"update in progress"}}"#,
        )
        .unwrap();
        assert_eq!(svc.name, "svc");
        assert_eq!(svc.secrets[0].secret_name, "s_v2");
        assert_eq!(svc.secrets[0].file.as_ref().unwrap().mode, 0o444);
        assert_eq!(svc.update.unwrap().state, "updating");
        let bare = parse_service(
            r#"{"ID":"q4","Spec":{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"x"}}}}"#,
        )
        .unwrap();
        assert!(bare.secrets.is_empty() && bare.update.is_none());
        assert_eq!(parse_update_status("null\n").unwrap(), None);
    }

    #[test]
    fn secret_add_flag_keeps_target_owner_and_octal_mode() {
        let add = SecretAdd {
            source: "s.pem-0123456789ab".into(),
            file: SecretFile {
                name: "s.pem".into(),
                uid: "0".into(),
                gid: "33".into(),
                mode: 0o440,
            },
        };
        assert_eq!(
            add.flag(),
            "source=s.pem-0123456789ab,target=s.pem,uid=0,gid=33,mode=0440"
        );
    }
}
