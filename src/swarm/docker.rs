//! The docker commands `phoenix-swarm` runs inside a VM, through the one
//! `qm guest exec` transport, and parsers of what they print.
//!
//! Traps handled here:
//! - `docker info --format '{{json .Swarm}}'` with the daemon down prints
//!   the error on stderr, then renders the template over an empty `Info`
//!   (`"LocalNodeState":""`) and exits 0. An empty or unknown state, or
//!   anything on stderr, is a failure to read the state: never "inactive".
//!   docker 20.10's CLI (Debian bookworm's docker.io) exits 1 printing
//!   only the template's "nil pointer" error: named for what it means.
//! - A worker's `docker info` carries no `Cluster`: only a manager knows
//!   the cluster id, so membership is decided by the manager's node list.
//! - `docker swarm init` prints the worker join token on stdout and
//!   `join-token -q` is the token: their stdout is never logged or shown,
//!   not even when `qm`'s reply around it does not parse
//!   ([`Stdout::Secret`]). Every message of this layer is scrubbed of the
//!   tokens it has seen and of anything that looks like one (`SWMTKN-...`),
//!   wherever it came from (a guest's stderr, `qm`'s own error).
//! - The join token reaches the worker on stdin (`qm guest exec
//!   --pass-stdin`); a constant `sh -c` reads it and hands it to
//!   `docker swarm join`, which has no stdin option. The host's argv and
//!   logs never carry it (the guest's own process list does, briefly).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::exit::{err, kind_of, Kind};
use crate::proxmox::{Guest, GuestOutput, Proxmox, Stdout};

/// moby's errSwarmExists (init or join on a node already in a swarm).
pub const ERR_SWARM_EXISTS: &str = "This node is already part of a swarm";
/// moby's errSwarmJoinTimeoutReached: the join goes on in the background.
pub const ERR_JOIN_TIMEOUT: &str = "Timeout was reached before node joined";
/// swarmkit, when a manager has lost its quorum.
pub const ERR_NO_LEADER: &str = "The swarm does not have a leader";

/// The worker-side join: the token comes on stdin, the manager address as
/// `$1`. Constant text: no data is ever spliced into it.
const JOIN_SCRIPT: &str = r#"IFS= read -r token || { echo "phoenix-swarm: no join token on stdin" >&2; exit 2; }
exec docker swarm join --token "$token" "$1""#;

/// `LocalNodeState` of a swarm node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Not in a swarm.
    Inactive,
    /// Joining (possibly in the background after a timed-out join).
    Pending,
    /// A member.
    Active,
    /// The swarm component failed (see `Error`).
    Error,
    /// An autolocked manager waiting for `docker swarm unlock`.
    Locked,
}

impl NodeState {
    fn parse(s: &str) -> Option<NodeState> {
        Some(match s {
            "inactive" => NodeState::Inactive,
            "pending" => NodeState::Pending,
            "active" => NodeState::Active,
            "error" => NodeState::Error,
            "locked" => NodeState::Locked,
            _ => return None,
        })
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Inactive => "inactive",
            NodeState::Pending => "pending",
            NodeState::Active => "active",
            NodeState::Error => "error",
            NodeState::Locked => "locked",
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawInfo {
    #[serde(rename = "NodeID", default)]
    node_id: String,
    #[serde(default)]
    node_addr: String,
    #[serde(default)]
    local_node_state: String,
    #[serde(default)]
    control_available: bool,
    #[serde(default)]
    error: String,
    #[serde(default)]
    remote_managers: Option<Vec<Peer>>,
    #[serde(default)]
    cluster: Option<RawCluster>,
}

#[derive(Debug, Deserialize)]
struct RawCluster {
    #[serde(rename = "ID")]
    id: String,
}

/// A manager as a node's `RemoteManagers` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Peer {
    /// Its node id.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// `ip:port`.
    #[serde(rename = "Addr")]
    pub addr: String,
}

/// The swarm part of `docker info`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmInfo {
    /// `LocalNodeState`.
    pub state: NodeState,
    /// `ControlAvailable`: this node is a manager.
    pub control: bool,
    /// `NodeID` (empty while inactive).
    pub node_id: String,
    /// `NodeAddr`.
    pub node_addr: String,
    /// `Cluster.ID`, only on a manager.
    pub cluster_id: Option<String>,
    /// `Error`.
    pub error: String,
    /// `RemoteManagers`.
    pub managers: Vec<Peer>,
}

/// Parse the output of `docker info --format '{{json .Swarm}}'`.
pub fn parse_info(out: &GuestOutput) -> Result<SwarmInfo> {
    let stderr = out.stderr.trim();
    if out.exitcode != 0 || !stderr.is_empty() {
        let why = if stderr.is_empty() {
            out.stdout.trim()
        } else {
            stderr
        };
        let why = if why.contains("nil pointer") {
            format!("the docker daemon did not answer (no Info to render: {why})")
        } else {
            why.to_string()
        };
        // With --format, docker info exits 0 and prints the daemon error
        // on stderr: say so rather than "failed (exit status 0)".
        return Err(if out.exitcode == 0 {
            anyhow::anyhow!(
                "docker info reported an error (its exit status is 0 even so): {}",
                clip(&why)
            )
        } else {
            anyhow::anyhow!(
                "docker info failed (exit status {}): {}",
                out.exitcode,
                clip(&why)
            )
        });
    }
    let raw: RawInfo = serde_json::from_str(out.stdout.trim()).with_context(|| {
        format!(
            "docker info printed no swarm JSON: {}",
            clip(out.stdout.trim())
        )
    })?;
    let state = NodeState::parse(&raw.local_node_state).ok_or_else(|| {
        anyhow::anyhow!(
            "docker info gave no usable swarm state (LocalNodeState {:?}): the daemon did not answer",
            raw.local_node_state
        )
    })?;
    Ok(SwarmInfo {
        state,
        control: raw.control_available,
        node_id: raw.node_id,
        node_addr: raw.node_addr,
        cluster_id: raw.cluster.map(|c| c.id).filter(|id| !id.is_empty()),
        error: raw.error,
        managers: raw.remote_managers.unwrap_or_default(),
    })
}

/// One line of `docker node ls --format '{{json .}}'`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct NodeEntry {
    /// Node id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Hostname of the node's machine.
    #[serde(rename = "Hostname")]
    pub hostname: String,
    /// `Ready`, `Down`, `Unknown`, `Disconnected`.
    #[serde(rename = "Status")]
    pub status: String,
    /// `Active`, `Pause`, `Drain`.
    #[serde(rename = "Availability", default)]
    pub availability: String,
    /// Empty for a worker; `Leader`, `Reachable`, `Unreachable` for a manager.
    #[serde(rename = "ManagerStatus", default)]
    pub manager_status: String,
}

impl NodeEntry {
    /// `Status` is `Ready`.
    pub fn is_ready(&self) -> bool {
        self.status.eq_ignore_ascii_case("ready")
    }

    /// `Status` is `Down`.
    pub fn is_down(&self) -> bool {
        self.status.eq_ignore_ascii_case("down")
    }

    /// The entry is a manager's.
    pub fn is_manager(&self) -> bool {
        !self.manager_status.is_empty()
    }
}

/// Parse what `docker ... --format '{{json .}}'` prints, one object a
/// line; `what` names the command and the object in the error
/// (`"docker node ls", "a node"`).
pub(super) fn json_lines<T: serde::de::DeserializeOwned>(
    stdout: &str,
    command: &str,
    object: &str,
) -> Result<Vec<T>> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).with_context(|| {
                format!("{command} printed a line that is not {object}: {}", clip(l))
            })
        })
        .collect()
}

/// Parse `docker node ls --format '{{json .}}'` (one object a line).
pub fn parse_node_ls(stdout: &str) -> Result<Vec<NodeEntry>> {
    json_lines(stdout, "docker node ls", "a node")
}

/// Parse `docker node inspect --format '{{json .Spec.Labels}}'` (`null`
/// when the node has none).
pub fn parse_labels(stdout: &str) -> Result<BTreeMap<String, String>> {
    let v: Option<BTreeMap<String, String>> =
        serde_json::from_str(stdout.trim()).with_context(|| {
            format!(
                "docker node inspect printed no labels JSON: {}",
                clip(stdout)
            )
        })?;
    Ok(v.unwrap_or_default())
}

/// A swarm join token. Never displayed: `Debug` is redacted and there is
/// no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl JoinToken {
    /// Check the shape moby prints (`SWMTKN-1-<digest>-<secret>`): a token
    /// with a newline or a shell character would not survive the trip.
    pub fn parse(s: &str) -> Result<JoinToken> {
        let t = s.trim();
        let ok = t.starts_with("SWMTKN-")
            && t.len() < 512
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(anyhow::anyhow!(
                "docker swarm join-token printed something that is not a join token"
            ));
        }
        Ok(JoinToken(t.to_string()))
    }

    fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

/// What `docker swarm join` ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinResult {
    /// "This node joined a swarm as a ...".
    Joined,
    /// errSwarmExists: the node is already in a swarm (re-read the state).
    AlreadyInSwarm,
    /// errSwarmJoinTimeoutReached, or `qm`'s own timeout: the join may
    /// still complete in the background (re-read the state, do not rejoin).
    InProgress,
}

/// Docker inside one VM.
pub struct Docker<'a> {
    px: &'a Proxmox,
    guest: Guest,
    /// `VM 1002 (drphoenix)`, for messages.
    what: String,
    /// Secrets to scrub from any message about this VM.
    secrets: Vec<String>,
}

impl<'a> Docker<'a> {
    /// Docker in `guest`, named `what` in messages.
    pub fn new(px: &'a Proxmox, guest: Guest, what: impl Into<String>) -> Self {
        Docker {
            px,
            guest,
            what: what.into(),
            secrets: Vec::new(),
        }
    }

    /// `VM 1001 (portainer)`: the VM, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    fn scrub(&self, text: &str) -> String {
        scrub_tokens(
            &self
                .secrets
                .iter()
                .fold(text.to_string(), |t, s| t.replace(s.as_str(), "<redacted>")),
        )
    }

    /// `e` with every secret scrubbed from its messages. A chain that
    /// held one is folded into one message (its kind kept); others are
    /// returned as they are.
    fn scrub_err(&self, e: anyhow::Error) -> anyhow::Error {
        let text = format!("{e:#}");
        let clean = self.scrub(&text);
        if clean == text {
            e
        } else {
            err(kind_of(&e), clean)
        }
    }

    pub(super) fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<GuestOutput> {
        self.run_as(args, stdin, Stdout::Shown)
    }

    fn run_as(&self, args: &[&str], stdin: Option<&[u8]>, quote: Stdout) -> Result<GuestOutput> {
        let argv: Vec<String> = std::iter::once("docker")
            .chain(args.iter().copied())
            .map(String::from)
            .collect();
        self.px
            .exec_as(self.guest, &argv, stdin, quote)
            .map_err(|e| self.scrub_err(e))
    }

    /// Run and require exit 0. `secret_stdout`: never quote stdout, not
    /// even when `qm`'s reply does not parse.
    pub(super) fn run_ok(&self, args: &[&str], secret_stdout: bool) -> Result<GuestOutput> {
        let quote = if secret_stdout {
            Stdout::Secret
        } else {
            Stdout::Shown
        };
        let out = self.run_as(args, None, quote)?;
        if out.exitcode != 0 {
            let detail = match out.stderr.trim() {
                "" if !secret_stdout => out.stdout.trim(),
                s => s,
            };
            return Err(anyhow::anyhow!(
                "{}: `docker {}` exited with status {}: {}",
                self.what,
                args.join(" "),
                out.exitcode,
                clip(&self.scrub(detail))
            ));
        }
        Ok(out)
    }

    /// `docker info --format '{{json .Swarm}}'`, checked.
    pub fn info(&self) -> Result<SwarmInfo> {
        let out = self.run(&["info", "--format", "{{json .Swarm}}"], None)?;
        parse_info(&out).with_context(|| format!("{}: reading the swarm state", self.what))
    }

    /// `docker swarm init --advertise-addr ADDR [--listen-addr 0.0.0.0:PORT]
    /// [--force-new-cluster]`. Its stdout carries the worker token: dropped.
    pub fn init(&self, args: &[String]) -> Result<JoinResult> {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run_as(&argv, None, Stdout::Secret)?;
        if out.exitcode == 0 {
            return Ok(JoinResult::Joined);
        }
        if out.stderr.contains(ERR_SWARM_EXISTS) {
            return Ok(JoinResult::AlreadyInSwarm);
        }
        Err(anyhow::anyhow!(
            "{}: `docker {}` exited with status {}: {}",
            self.what,
            args.join(" "),
            out.exitcode,
            clip(&self.scrub(out.stderr.trim()))
        ))
    }

    /// `docker swarm join-token -q ROLE` on a manager.
    pub fn join_token(&mut self, role: &str) -> Result<JoinToken> {
        let out = self.run_ok(&["swarm", "join-token", "-q", role], true)?;
        // The parse error never quotes what it could not read.
        let token = JoinToken::parse(&out.stdout).with_context(|| {
            format!(
                "{}: reading the {role} join token (`docker swarm join-token -q {role}`)",
                self.what
            )
        })?;
        self.secrets.push(token.secret().to_string());
        Ok(token)
    }

    /// `docker swarm join --token T REMOTE`, the token on stdin.
    pub fn join(&mut self, token: &JoinToken, remote: &str) -> Result<JoinResult> {
        self.secrets.push(token.secret().to_string());
        let argv: Vec<String> = ["sh", "-c", JOIN_SCRIPT, "phoenix-swarm-join", remote]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let stdin = format!("{}\n", token.secret());
        let out = match self.px.exec(self.guest, &argv, Some(stdin.as_bytes())) {
            Ok(out) => out,
            // qm's own timeout: a bare pid, the join still running.
            Err(e) if kind_of(&e) == Kind::Timeout => {
                log::warn!("{}: {}", self.what, self.scrub(&format!("{e:#}")));
                return Ok(JoinResult::InProgress);
            }
            Err(e) => return Err(self.scrub_err(e)),
        };
        if out.exitcode == 0 {
            return Ok(JoinResult::Joined);
        }
        if out.stderr.contains(ERR_SWARM_EXISTS) {
            return Ok(JoinResult::AlreadyInSwarm);
        }
        if out.stderr.contains(ERR_JOIN_TIMEOUT) {
            return Ok(JoinResult::InProgress);
        }
        Err(err(
            Kind::Failed,
            format!(
                "{}: `docker swarm join --token <redacted> {remote}` exited with status {}: {}",
                self.what,
                out.exitcode,
                clip(&self.scrub(out.stderr.trim()))
            ),
        ))
    }

    /// `docker swarm leave --force`.
    pub fn leave_force(&self) -> Result<()> {
        self.run_ok(&["swarm", "leave", "--force"], false)
            .map(|_| ())
    }

    /// `docker node ls --format '{{json .}}'` on a manager.
    pub fn node_ls(&self) -> Result<Vec<NodeEntry>> {
        let out = self.run_ok(&["node", "ls", "--format", "{{json .}}"], false)?;
        parse_node_ls(&out.stdout).with_context(|| format!("{}: listing swarm nodes", self.what))
    }

    /// `docker node rm ID` on a manager (only a Down node goes).
    pub fn node_rm(&self, id: &str) -> Result<()> {
        self.run_ok(&["node", "rm", id], false).map(|_| ())
    }

    /// The labels of node `id`, on a manager.
    pub fn node_labels(&self, id: &str) -> Result<BTreeMap<String, String>> {
        let out = self.run_ok(
            &["node", "inspect", "--format", "{{json .Spec.Labels}}", id],
            false,
        )?;
        parse_labels(&out.stdout).with_context(|| format!("{}: labels of node {id}", self.what))
    }

    /// `docker node update --label-add K=V... ID`, on a manager.
    pub fn label_add(&self, id: &str, labels: &[String]) -> Result<()> {
        let mut args = vec!["node", "update"];
        for l in labels {
            args.extend(["--label-add", l.as_str()]);
        }
        args.push(id);
        self.run_ok(&args, false).map(|_| ())
    }
}

/// Replace what follows every `SWMTKN-` (a swarm join token, or the
/// start of one) up to the next character a token cannot hold.
pub fn scrub_tokens(text: &str) -> String {
    const MARK: &str = "SWMTKN-";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i + MARK.len()]);
        out.push_str("<redacted>");
        rest = rest[i + MARK.len()..]
            .trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '-');
    }
    out.push_str(rest);
    out
}

/// At most 500 characters of `text`, for messages, with anything that
/// looks like a join token scrubbed.
pub(super) fn clip(text: &str) -> String {
    let scrubbed = scrub_tokens(text);
    let t = scrubbed.trim();
    match t.char_indices().nth(500) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(code: i32, stdout: &str, stderr: &str) -> GuestOutput {
        GuestOutput {
            exitcode: code,
            stdout: stdout.into(),
            stderr: stderr.into(),
            ..GuestOutput::default()
        }
    }

    #[test]
    fn manager_info_parses() {
        let i = parse_info(&out(
            0,
            r#"{"NodeID":"n1","NodeAddr":"10.0.0.111","LocalNodeState":"active","ControlAvailable":true,"Error":"","RemoteManagers":[{"NodeID":"n1","Addr":"10.0.0.111:2377"}],"Nodes":2,"Managers":1,"Cluster":{"ID":"c1","Version":{"Index":12}}}"#,
            "",
        ))
        .unwrap();
        assert_eq!(i.state, NodeState::Active);
        assert!(i.control);
        assert_eq!(i.cluster_id.as_deref(), Some("c1"));
        assert_eq!(i.managers[0].addr, "10.0.0.111:2377");
    }

    #[test]
    fn daemon_down_is_not_inactive() {
        // What docker/cli prints with --format when the daemon is down:
        // the error on stderr, an empty Info on stdout, exit status 0.
        let e = parse_info(&out(
            0,
            r#"{"NodeID":"","NodeAddr":"","LocalNodeState":"","ControlAvailable":false,"Error":"","RemoteManagers":null}"#,
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("Cannot connect"), "{e}");
        assert!(e.to_string().contains("exit status is 0 even so"), "{e}");
        // docker 20.10's CLI: exit 1 and only the template's error.
        let e = parse_info(&out(
            1,
            "\n",
            "template: :1:7: executing \"\" at <.Swarm>: reflect: indirection through nil pointer to embedded struct field Info\n",
        ))
        .unwrap_err();
        assert!(
            e.to_string().contains("the docker daemon did not answer"),
            "{e}"
        );
        // Even with stderr lost, an empty state is no state.
        let e = parse_info(&out(0, r#"{"LocalNodeState":""}"#, "")).unwrap_err();
        assert!(e.to_string().contains("no usable swarm state"), "{e}");
        assert!(parse_info(&out(0, "", "")).is_err());
    }

    #[test]
    fn node_ls_and_labels_parse() {
        let nodes = parse_node_ls(
            "{\"Availability\":\"Active\",\"EngineVersion\":\"27.5.1\",\"Hostname\":\"w\",\"ID\":\"a\",\"ManagerStatus\":\"\",\"Self\":false,\"Status\":\"Down\",\"TLSStatus\":\"Ready\"}\n\
             {\"Availability\":\"Active\",\"EngineVersion\":\"27.5.1\",\"Hostname\":\"m\",\"ID\":\"b\",\"ManagerStatus\":\"Leader\",\"Self\":true,\"Status\":\"Ready\",\"TLSStatus\":\"Ready\"}\n",
        )
        .unwrap();
        assert!(nodes[0].is_down() && !nodes[0].is_manager());
        assert!(nodes[1].is_ready() && nodes[1].is_manager());
        assert!(parse_labels("null\n").unwrap().is_empty());
        assert_eq!(parse_labels("{\"gpu\":\"false\"}").unwrap()["gpu"], "false");
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let t = JoinToken::parse("SWMTKN-1-abc123-def456\n").unwrap();
        assert_eq!(format!("{t:?}"), "JoinToken(<redacted>)");
        assert!(JoinToken::parse("SWMTKN-1-abc\nrm -rf /").is_err());
        assert!(JoinToken::parse("Error: not a manager").is_err());
    }

    #[test]
    fn anything_like_a_token_is_scrubbed() {
        assert_eq!(
            scrub_tokens("bad: SWMTKN-1-abc123-def456 and \"SWMTKN-1-x\".\nSWMTKN-"),
            "bad: SWMTKN-<redacted> and \"SWMTKN-<redacted>\".\nSWMTKN-<redacted>"
        );
        assert_eq!(scrub_tokens("no token"), "no token");
        assert!(!clip("x SWMTKN-1-abc-def456 y").contains("def456"));
    }

    #[test]
    fn join_script_is_constant_and_reads_stdin() {
        // The token travels on stdin and the address as $1: run the
        // script with a stand-in docker to see what it would execute.
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker");
        std::fs::write(&docker, "#!/bin/sh\nprintf '%s|' \"$@\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:/usr/bin:/bin", dir.path().display());
        let o = crate::exec::Cmd::new("sh")
            .args(["-c", JOIN_SCRIPT, "phoenix-swarm-join", "10.0.0.111:2377"])
            .env("PATH", path)
            .stdin("SWMTKN-1-x-y\n")
            .run()
            .unwrap();
        assert_eq!(
            o.stdout_str(),
            "swarm|join|--token|SWMTKN-1-x-y|10.0.0.111:2377|"
        );
        let o = crate::exec::Cmd::new("sh")
            .args(["-c", JOIN_SCRIPT, "phoenix-swarm-join", "10.0.0.111:2377"])
            .stdin("")
            .run()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
    }
}
