//! The compose renderer of `phoenix-deploy`: parse a stack's compose file,
//! interpolate it from the stack's own variables, and render the text sent
//! to `docker stack deploy -c -` with the stack's variables, Traefik labels,
//! placement constraint, file mounts and versioned secret names put in.
//!
//! The `$VAR`/`${VAR}` interpolation is `interpolate.rs`'s (from the
//! stack's variables only, every `$` doubled in the output for the docker
//! CLI's own pass); the YAML written, quoted where the docker 20.10 CLI's
//! YAML 1.1 would misread a string, is `yaml.rs`'s.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_yaml_ng::{Mapping, Value};

use super::interpolate::{interpolate, walk_strings};
use super::yaml::to_yaml;
use crate::exit::{err, Kind};

/// The version written when the file has none or an older 3.x (3.x is
/// backward compatible; `name:` on an external secret needs 3.5).
const DEFAULT_VERSION: &str = "3.8";

/// Mode of a mounted host file in the container (0444; YAML 1.2 has no
/// `0444` octal, the integer is the same mode for docker).
const FILE_MODE: u64 = 0o444;

/// A compose file, parsed and interpolated, ready to render.
#[derive(Debug, Clone)]
pub struct Compose {
    doc: Mapping,
    path: PathBuf,
}

/// An external object (secret or network) a compose file refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    /// Its key under the top-level `secrets:`/`networks:`.
    pub key: String,
    /// The name it has in the swarm: its `name:` if given, else the key.
    pub name: String,
}

/// A host file mounted into every service of a stack, as a swarm secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMount {
    /// Key under the top-level `secrets:` (e.g. `phoenix_file_1`).
    pub key: String,
    /// The swarm secret's (versioned) name.
    pub name: String,
    /// Absolute path in the container (`destination_in_container`).
    pub target: String,
}

/// What is put into a compose file.
#[derive(Debug, Clone, Copy)]
pub struct RenderInput<'a> {
    /// Environment variables for every service (`variables`), in order.
    pub variables: &'a [(String, String)],
    /// `key=value` labels per service (`traefik_labels`), into `deploy.labels`.
    pub labels: &'a BTreeMap<String, Vec<String>>,
    /// Where `labels` came from, for the error on an unknown service (e.g.
    /// "phoenix_stacks_config.json docker_stacks.qdrant_service.environments.production.services").
    pub labels_origin: &'a str,
    /// Host files mounted in every service.
    pub files: &'a [FileMount],
    /// A placement constraint added to every service (e.g. `node.labels.phoenix.vmid == 1002`).
    pub constraint: Option<&'a str>,
    /// Swarm names of external secrets: name as declared (ExternalRef.name) -> the name to use.
    pub secret_names: &'a BTreeMap<String, String>,
}

impl Compose {
    /// Parse `text` (the content of `path`), apply YAML merge keys (`<<`),
    /// and interpolate `$VAR`/`${VAR}` in every string value from `variables` only.
    pub fn parse(path: &Path, text: &str, variables: &[(String, String)]) -> Result<Compose> {
        let mut doc: Value = serde_yaml_ng::from_str(text).map_err(|e| {
            let place = (e.location()).map(|l| format!(" line {} column {}", l.line(), l.column()));
            let shown = path.display();
            err(
                Kind::Config,
                format!("compose file '{shown}'{}: {e}", place.unwrap_or_default()),
            )
        })?;
        doc.apply_merge()
            .map_err(|e| config(path, "merge keys (<<)", e))?;
        let Value::Mapping(mut doc) = doc else {
            return Err(config(path, "", "expected a mapping at the top level"));
        };
        let services = match doc.get("services") {
            Some(Value::Mapping(s)) if !s.is_empty() => s,
            None | Some(Value::Null) => return Err(config(path, "services", "missing")),
            Some(Value::Mapping(_)) => return Err(config(path, "services", "no services")),
            Some(_) => return Err(config(path, "services", "expected a mapping")),
        };
        for (name, service) in services {
            let at = format!("services.{}", key_text(name));
            if !name.is_string() {
                return Err(config(path, &at, "a service name must be a string"));
            }
            if !service.is_mapping() {
                return Err(config(path, &at, "expected a mapping"));
            }
        }
        for (key, value) in doc.iter_mut() {
            walk_strings(value, &key_text(key), &mut |s, at| {
                *s = interpolate(s, variables).map_err(|m| config(path, at, m))?;
                Ok(())
            })?;
        }
        let path = path.to_path_buf();
        Ok(Compose { doc, path })
    }

    /// Names of its services, in file order.
    pub fn services(&self) -> Vec<String> {
        match self.doc.get("services") {
            Some(Value::Mapping(s)) => s.keys().map(key_text).collect(),
            _ => Vec::new(),
        }
    }

    /// Top-level secrets with `external: true` (both `external: true` and the old `external: {name: X}` form).
    pub fn external_secrets(&self) -> Vec<ExternalRef> {
        externals(self.doc.get("secrets"))
    }

    /// Top-level networks with `external: true` (same forms).
    pub fn external_networks(&self) -> Vec<ExternalRef> {
        externals(self.doc.get("networks"))
    }

    /// The compose text to send to `docker stack deploy -c -`.
    pub fn render(&self, input: &RenderInput) -> Result<String> {
        let services = self.services();
        if let Some(unknown) = input.labels.keys().find(|s| !services.contains(s)) {
            let (origin, shown) = (input.labels_origin, self.path.display());
            let msg = format!(
                "{origin}: service '{unknown}' is not in compose file '{shown}' (its services: {})",
                services.join(", ")
            );
            return Err(err(Kind::Config, msg));
        }
        let mut doc = self.doc.clone();
        self.set_version(&mut doc)?;
        if let Some(Value::Mapping(secrets)) = doc.get_mut("secrets") {
            for (key, def) in secrets.iter_mut() {
                let resolved = external_name(key, def).and_then(|n| input.secret_names.get(&n));
                if let (Some(resolved), Value::Mapping(def)) = (resolved, def) {
                    // Also rewrites the old `external: {name: x}` form,
                    // which docker refuses beside a `name:`.
                    def.insert("external".into(), true.into());
                    def.insert("name".into(), resolved.as_str().into());
                }
            }
        }
        if !input.files.is_empty() {
            let secrets = self.map_in(&mut doc, "secrets", "")?;
            for f in input.files {
                let def = mapping([("external", true.into()), ("name", f.name.as_str().into())]);
                secrets.insert(f.key.as_str().into(), def);
            }
        }
        if let Some(Value::Mapping(all)) = doc.get_mut("services") {
            for (name, service) in all.iter_mut() {
                if let (Some(name), Value::Mapping(service)) = (name.as_str(), service) {
                    self.render_service(name, service, input)?;
                }
            }
        }
        let mut doc = Value::Mapping(doc);
        walk_strings(&mut doc, "", &mut |s, _| {
            *s = s.replace('$', "$$");
            Ok(())
        })?;
        to_yaml(doc).with_context(|| format!("rendering compose file '{}'", self.path.display()))
    }

    /// Put the variables, labels, constraint and file mounts into one service.
    fn render_service(&self, name: &str, service: &mut Mapping, input: &RenderInput) -> Result<()> {
        let at = format!("services.{name}");
        let variables = input
            .variables
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()));
        self.pairs_in(service, "environment", &at, variables)?;
        let labels = input.labels.get(name);
        if labels.is_some() || input.constraint.is_some() {
            let deploy = self.map_in(service, "deploy", &at)?;
            let at = format!("{at}.deploy");
            if let Some(labels) = labels {
                let pairs = labels.iter().map(|l| l.split_once('=').unwrap_or((l, "")));
                self.pairs_in(deploy, "labels", &at, pairs)?;
            }
            if let Some(constraint) = input.constraint {
                let placement = self.map_in(deploy, "placement", &at)?;
                let list = self.list_in(placement, "constraints", &format!("{at}.placement"))?;
                if !list.iter().any(|c| c.as_str() == Some(constraint)) {
                    list.push(constraint.into());
                }
            }
        }
        if !input.files.is_empty() {
            let list = self.list_in(service, "secrets", &at)?;
            for f in input.files {
                list.retain(|s| secret_source(s) != Some(f.key.as_str()));
                let (source, target) = (f.key.as_str().into(), f.target.as_str().into());
                list.push(mapping([
                    ("source", source),
                    ("target", target),
                    ("mode", FILE_MODE.into()),
                ]));
            }
        }
        // `mode: 0600` is octal to docker (YAML 1.1) but a string to
        // serde_yaml_ng (YAML 1.2), which would write it back quoted and
        // docker refuse it: write the number docker reads.
        for key in ["secrets", "configs"] {
            let Some(Value::Sequence(list)) = service.get_mut(key) else {
                continue;
            };
            for mode in list.iter_mut().filter_map(|s| s.get_mut("mode")) {
                let octal = mode.as_str().and_then(|m| m.strip_prefix('0'));
                if let Some(n) = octal.and_then(|m| u64::from_str_radix(m, 8).ok()) {
                    *mode = n.into();
                }
            }
        }
        Ok(())
    }

    /// Check `version` and raise an older 3.x to [`DEFAULT_VERSION`].
    fn set_version(&self, doc: &mut Mapping) -> Result<()> {
        let current = match doc.get("version") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.trim().to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => return Err(self.error("version", "expected a string such as '3.8'")),
        };
        let minor = match current.as_deref() {
            None | Some("3") => Some(0),
            Some(v) => v.strip_prefix("3.").and_then(|m| m.parse::<u32>().ok()),
        };
        let version = match minor {
            Some(m) if m < 8 => DEFAULT_VERSION.to_string(),
            Some(m @ (8 | 9)) => format!("3.{m}"),
            _ => {
                let msg = "is not supported: docker stack deploy needs a version 3 compose file (3.0 to 3.9)";
                let version = current.unwrap_or_default();
                return Err(self.error("version", format!("'{version}' {msg}")));
            }
        };
        if doc.contains_key("version") {
            doc.insert("version".into(), version.into());
        } else {
            let rest = std::mem::take(doc);
            doc.insert("version".into(), version.into());
            doc.extend(rest);
        }
        Ok(())
    }

    /// Set `pairs` in the compose "list or mapping" (`environment`,
    /// `labels`) under `key` in `parent` at `at`, keeping its form: a pair
    /// replaces an entry with the same key, or is appended.
    fn pairs_in<'p>(
        &self,
        parent: &mut Mapping,
        key: &str,
        at: &str,
        pairs: impl IntoIterator<Item = (&'p str, &'p str)>,
    ) -> Result<()> {
        match entry(parent, key, Mapping::new().into()) {
            Value::Mapping(map) => {
                for (k, v) in pairs {
                    map.insert(k.into(), v.into());
                }
            }
            Value::Sequence(list) => {
                for (k, v) in pairs {
                    let item = Value::String(format!("{k}={v}"));
                    let same = |e: &Value| e.as_str().and_then(|s| s.split('=').next()) == Some(k);
                    match list.iter().position(same) {
                        Some(i) => list[i] = item,
                        None => list.push(item),
                    }
                }
            }
            _ => return Err(self.error(&join(at, key), "expected a list or a mapping")),
        }
        Ok(())
    }

    /// The mapping under `key` in `parent` at `at`, created when missing or null.
    fn map_in<'m>(&self, parent: &'m mut Mapping, key: &str, at: &str) -> Result<&'m mut Mapping> {
        match entry(parent, key, Mapping::new().into()) {
            Value::Mapping(m) => Ok(m),
            _ => Err(self.error(&join(at, key), "expected a mapping")),
        }
    }

    /// The list under `key` in `parent` at `at`, created when missing or null.
    fn list_in<'m>(
        &self,
        parent: &'m mut Mapping,
        key: &str,
        at: &str,
    ) -> Result<&'m mut Vec<Value>> {
        match entry(parent, key, Value::Sequence(Vec::new())) {
            Value::Sequence(list) => Ok(list),
            _ => Err(self.error(&join(at, key), "expected a list")),
        }
    }

    /// A configuration error at key path `at` of this file.
    fn error(&self, at: &str, msg: impl Display) -> anyhow::Error {
        config(&self.path, at, msg)
    }
}

/// A configuration error at key path `at` (may be empty) of compose file `path`.
fn config(path: &Path, at: &str, msg: impl Display) -> anyhow::Error {
    let shown = path.display();
    if at.is_empty() {
        err(Kind::Config, format!("compose file '{shown}': {msg}"))
    } else {
        err(Kind::Config, format!("compose file '{shown}': {at}: {msg}"))
    }
}

/// A mapping key as written in a key path.
pub(super) fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// Key path `at` and then `key`.
pub(super) fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// A mapping of `pairs`, in order.
fn mapping<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Mapping(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// The value under `key`, set to `empty` first when missing or null.
fn entry<'m>(parent: &'m mut Mapping, key: &str, empty: Value) -> &'m mut Value {
    let value = parent.entry(key.into()).or_insert(Value::Null);
    if value.is_null() {
        *value = empty;
    }
    value
}

/// The secret a service's `secrets` entry (short or long syntax) refers to.
fn secret_source(entry: &Value) -> Option<&str> {
    entry.as_str().or_else(|| entry.get("source")?.as_str())
}

/// The swarm name of a top-level secret or network if it is external.
fn external_name(key: &Value, def: &Value) -> Option<String> {
    let name = |m: &Value| m.get("name").and_then(Value::as_str).map(str::to_string);
    match def.get("external")? {
        Value::Bool(true) => Some(name(def).unwrap_or_else(|| key_text(key))),
        ext @ Value::Mapping(_) => Some(
            name(ext)
                .or_else(|| name(def))
                .unwrap_or_else(|| key_text(key)),
        ),
        _ => None,
    }
}

/// The external entries of a top-level `secrets`/`networks` mapping.
fn externals(section: Option<&Value>) -> Vec<ExternalRef> {
    let Some(Value::Mapping(section)) = section else {
        return Vec::new();
    };
    section
        .iter()
        .filter_map(|(key, def)| {
            let name = external_name(key, def)?;
            Some(ExternalRef {
                key: key_text(key),
                name,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::kind_of;

    const PORTAINER: &str = "\
version: '3.2'
services:
  agent:
    image: portainer/agent:2.19.4
    deploy: {mode: global}
  portainer:
    image: portainer/portainer-ce:${PORTAINER_VERSION:-2.19.4}
    command: -H tcp://tasks.agent:9001 --tlsskipverify
    ports:
      - {target: 9443, published: 9443, protocol: tcp, mode: ingress}
    networks: [traefik-public]
    secrets:
      - portainer_admin_password
      - source: portainer_tls_cert
        target: /certs/tls-cert.pem
        mode: 0600
    deploy:
      placement:
        constraints: [node.role == manager]
      labels: {}
networks:
  traefik-public:
    external: true
secrets:
  portainer_admin_password:
    external: true
  portainer_tls_cert:
    external:
      name: portainer_tls_cert_v1
";

    const QDRANT: &str = "\
version: '3.8'
services:
  qdrant:
    image: qdrant/qdrant:v1.9.0
    restart: always
    environment:
      - QDRANT__SERVICE__HTTP_PORT=6333
      - QDRANT__LOG_LEVEL=INFO
    deploy:
      labels:
        - traefik.enable=true
      placement:
        constraints: []
";

    /// The owned parts of a [`RenderInput`], empty by default.
    #[derive(Default)]
    struct Case {
        variables: Vec<(String, String)>,
        labels: BTreeMap<String, Vec<String>>,
        files: Vec<FileMount>,
        names: BTreeMap<String, String>,
        constraint: Option<&'static str>,
    }

    impl Case {
        fn input(&self) -> RenderInput<'_> {
            RenderInput {
                variables: &self.variables,
                labels: &self.labels,
                labels_origin: "stacks.json qdrant.services",
                files: &self.files,
                constraint: self.constraint,
                secret_names: &self.names,
            }
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(text: &str, variables: &[(&str, &str)]) -> Result<Compose> {
        Compose::parse(Path::new("/srv/x.yml"), text, &vars(variables))
    }

    /// The text `text` renders to with the input `set` makes.
    fn try_render(text: &str, set: impl FnOnce(&mut Case)) -> Result<String> {
        let mut case = Case::default();
        set(&mut case);
        parse(text, &[])?.render(&case.input())
    }

    /// What docker reads from that text once it has turned `$$` into `$`.
    fn render(text: &str, set: impl FnOnce(&mut Case)) -> Value {
        reread(&try_render(text, set).unwrap())
    }

    fn reread(text: &str) -> Value {
        serde_yaml_ng::from_str(&text.replace("$$", "$")).unwrap()
    }

    fn config_error<T: std::fmt::Debug>(r: Result<T>) -> String {
        let e = r.unwrap_err();
        assert_eq!(kind_of(&e), Kind::Config, "{e:#}");
        format!("{e:#}")
    }

    #[test]
    fn syntax_error_names_file_line_and_column() {
        let msg = config_error(parse("services:\n  web:\n   image: x\n  - y\n", &[]));
        let want = "compose file '/srv/x.yml' line 4 column 3: did not find expected key";
        assert!(msg.starts_with(want), "{msg}");
    }

    #[test]
    fn a_file_without_services_is_refused() {
        for (text, want) in [
            ("version: '3.8'\n", "services: missing"),
            ("services: {}\n", "services: no services"),
            ("services:\n  web:\n", "services.web: expected a mapping"),
            ("- a\n", "expected a mapping at the top level"),
        ] {
            let msg = config_error(parse(text, &[]));
            assert_eq!(msg, format!("compose file '/srv/x.yml': {want}"));
        }
    }

    #[test]
    fn unset_required_and_invalid_variables_are_config_errors() {
        let text = "services:\n  web:\n    environment:\n      X: ${DB_HOST}\n";
        assert_eq!(
            config_error(parse(text, &[])),
            "compose file '/srv/x.yml': services.web.environment.X: variable DB_HOST is not set \
             (set it in the stack's environment variables)"
        );
        for (image, want) in [
            (
                "'app:${TAG:?pin a tag}'",
                "image: required variable TAG is empty: pin a tag",
            ),
            (
                "[sh, -c, 'echo ${HOME']",
                "image[2]: unterminated '${' in 'echo ${HOME'",
            ),
            (
                "a$",
                "image: invalid interpolation in 'a$': use $NAME or ${NAME}",
            ),
        ] {
            let msg = config_error(parse(
                &format!("services:\n  web:\n    image: {image}\n"),
                &[("TAG", "")],
            ));
            assert!(msg.contains(&format!("services.web.{want}")), "{msg}");
        }
    }

    #[test]
    fn dollars_survive_docker_interpolation() {
        let c = parse(
            "services:\n  sh:\n    command: [\"sh\", \"-c\", \"echo $$HOME\"]\n",
            &[],
        )
        .unwrap();
        let case = Case {
            variables: vars(&[("PASSWORD", "pa$word")]),
            ..Case::default()
        };
        let out = c.render(&case.input()).unwrap();
        assert!(out.contains("- echo $$HOME\n"), "{out}");
        assert!(out.contains("PASSWORD: pa$$word\n"), "{out}");
        // The Compose is left as it was: a second render is the same.
        assert_eq!(c.render(&case.input()).unwrap(), out);
        // A variable's value replaces its default on parsing.
        let c = parse(PORTAINER, &[("PORTAINER_VERSION", "2.20.1")]).unwrap();
        let out = reread(&c.render(&Case::default().input()).unwrap());
        assert_eq!(
            out["services"]["portainer"]["image"],
            "portainer/portainer-ce:2.20.1"
        );
    }

    #[test]
    fn variables_merge_into_list_and_map_environments() {
        let out = render(QDRANT, |c| {
            c.variables = vars(&[("QDRANT__LOG_LEVEL", "DEBUG"), ("TZ", "UTC")])
        });
        let want = reread("[QDRANT__SERVICE__HTTP_PORT=6333, QDRANT__LOG_LEVEL=DEBUG, TZ=UTC]");
        assert_eq!(out["services"]["qdrant"]["environment"], want);
        let text = try_render(PORTAINER, |c| {
            c.variables = vars(&[("TZ", "UTC"), ("FLAG", "yes")])
        })
        .unwrap();
        for service in ["agent", "portainer"] {
            let env = &reread(&text)["services"][service]["environment"];
            assert_eq!(env, &reread("{TZ: UTC, FLAG: 'yes'}"));
        }
        // Quoted, or docker's YAML 1.1 would read the boolean true.
        assert!(text.contains("FLAG: 'yes'\n"), "{text}");
    }

    fn labels(service: &str, labels: &[&str]) -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([(
            service.into(),
            labels.iter().map(|l| l.to_string()).collect(),
        )])
    }

    #[test]
    fn traefik_labels_go_into_deploy_labels() {
        let l = [
            "traefik.enable=true",
            "traefik.http.routers.p.rule=Host(`p.lan`)",
            "bare",
        ];
        let out = render(PORTAINER, |c| c.labels = labels("portainer", &l));
        let want = "{traefik.enable: 'true', traefik.http.routers.p.rule: Host(`p.lan`), bare: ''}";
        assert_eq!(
            out["services"]["portainer"]["deploy"]["labels"],
            reread(want)
        );
        assert_eq!(out["services"]["agent"]["deploy"], reread("{mode: global}"));

        let l = ["traefik.enable=false", "traefik.port=6333"];
        let out = render(QDRANT, |c| c.labels = labels("qdrant", &l));
        let want = reread("[traefik.enable=false, traefik.port=6333]");
        assert_eq!(out["services"]["qdrant"]["deploy"]["labels"], want);
    }

    #[test]
    fn labels_for_an_unknown_service_are_refused() {
        let r = try_render(QDRANT, |c| c.labels = labels("qdrnt", &["a=b"]));
        assert_eq!(
            config_error(r),
            "stacks.json qdrant.services: service 'qdrnt' is not in compose file '/srv/x.yml' \
             (its services: qdrant)"
        );
    }

    #[test]
    fn constraint_is_added_once_and_rendering_is_deterministic() {
        let c = parse(PORTAINER, &[]).unwrap();
        let case = Case {
            constraint: Some("node.labels.phoenix.vmid == 1002"),
            ..Case::default()
        };
        let first = c.render(&case.input()).unwrap();
        assert_eq!(c.render(&case.input()).unwrap(), first);
        let out = reread(&first);
        let constraints =
            |s: &str| out["services"][s]["deploy"]["placement"]["constraints"].clone();
        let want = reread("[node.role == manager, node.labels.phoenix.vmid == 1002]");
        assert_eq!(constraints("portainer"), want);
        assert_eq!(
            constraints("agent"),
            reread("[node.labels.phoenix.vmid == 1002]")
        );

        let want = reread("[node.role == manager]");
        for (text, service) in [(QDRANT, "qdrant"), (PORTAINER, "portainer")] {
            let out = render(text, |c| c.constraint = Some("node.role == manager"));
            assert_eq!(
                out["services"][service]["deploy"]["placement"]["constraints"],
                want
            );
        }
    }

    #[test]
    fn external_secrets_and_networks_are_listed_and_renamed() {
        let c = parse(PORTAINER, &[]).unwrap();
        let refs = |v: &[(&str, &str)]| -> Vec<ExternalRef> {
            let r = |(k, n): &(&str, &str)| ExternalRef {
                key: k.to_string(),
                name: n.to_string(),
            };
            v.iter().map(r).collect()
        };
        let want = refs(&[
            ("portainer_admin_password", "portainer_admin_password"),
            ("portainer_tls_cert", "portainer_tls_cert_v1"),
        ]);
        assert_eq!(c.external_secrets(), want);
        assert_eq!(
            c.external_networks(),
            refs(&[("traefik-public", "traefik-public")])
        );

        let out = render(PORTAINER, |c| {
            c.names = BTreeMap::from([
                (
                    "portainer_admin_password".into(),
                    "portainer_admin_password_3f2a".into(),
                ),
                (
                    "portainer_tls_cert_v1".into(),
                    "portainer_tls_cert_v1_9c1d".into(),
                ),
            ])
        });
        let want =
            "portainer_admin_password: {external: true, name: portainer_admin_password_3f2a}\n\
                    portainer_tls_cert: {external: true, name: portainer_tls_cert_v1_9c1d}\n";
        assert_eq!(out["secrets"], reread(want));
        assert_eq!(out["networks"], reread("traefik-public: {external: true}"));
        // `mode: 0600` is octal to docker: written as the same number.
        assert_eq!(out["services"]["portainer"]["secrets"][1]["mode"], 0o600);
    }

    #[test]
    fn file_mounts_become_secrets_in_every_service() {
        let file = FileMount {
            key: "phoenix_file_1".into(),
            name: "qdrant_config_yaml_5e1a".into(),
            target: "/qdrant/config/production.yaml".into(),
        };
        let out = render(QDRANT, |c| c.files = vec![file.clone()]);
        let want = reread("phoenix_file_1: {external: true, name: qdrant_config_yaml_5e1a}");
        assert_eq!(out["secrets"], want);
        let want = "[{source: phoenix_file_1, target: /qdrant/config/production.yaml, mode: 292}]";
        assert_eq!(out["services"]["qdrant"]["secrets"], reread(want));
        let out = render(PORTAINER, |c| c.files = vec![file]);
        assert_eq!(
            out["services"]["portainer"]["secrets"][2]["source"],
            "phoenix_file_1"
        );
        assert_eq!(out["services"]["agent"]["secrets"][0]["mode"], 0o444);
    }

    #[test]
    fn version_is_raised_to_3_8_or_refused() {
        let body = "services:\n  a:\n    image: x\n";
        for (version, want) in [
            ("", "3.8"),
            ("version: '3'\n", "3.8"),
            ("version: 3.2\n", "3.8"),
            ("version: '3.9'\n", "3.9"),
        ] {
            let out = try_render(&format!("{version}{body}"), |_| {}).unwrap();
            assert!(
                out.starts_with(&format!("version: '{want}'\nservices:\n")),
                "{out}"
            );
        }
        for version in ["'2.4'", "'1'", "'3.10'"] {
            let msg = config_error(try_render(&format!("version: {version}\n{body}"), |_| {}));
            let want = format!(
                "version: {version} is not supported: docker stack deploy needs a version 3"
            );
            assert!(msg.contains(&want), "{msg}");
        }
    }

    #[test]
    fn merge_keys_are_applied() {
        let text = "\
x-common: &common
  restart: always
  environment: {LOG: info}
services:
  a:
    <<: *common
    image: a
  b:
    <<: *common
    image: b
";
        assert_eq!(parse(text, &[]).unwrap().services(), ["a", "b"]);
        let out = render(text, |c| c.variables = vars(&[("TZ", "UTC")]));
        assert_eq!(out["services"]["b"]["restart"], "always");
        assert_eq!(
            out["services"]["b"]["environment"],
            reread("{LOG: info, TZ: UTC}")
        );
        assert!(out["services"]["a"].get("<<").is_none());
    }
}
