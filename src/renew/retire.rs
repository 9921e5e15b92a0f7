//! The bash managers this replaces, still installed beside it.
//!
//! The old Phoenix setup installs `/etc/cron.d/phoenix-cert-renewal`
//! (`0 * * * * root .../bin/managers/certificate-renewal-manager.sh`), and
//! `phoenix create` runs that certificate manager too. Neither takes our
//! lock: left in place, it renews the same files at the same time as
//! `phoenix-renew`, and a half-written pair or two reloads at once is the
//! least of it. Each run, and `status`, says so naming the file and how to
//! retire it (README "Moving from the bash managers").

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::fsutil;

/// Largest cron file or manager script read.
const READ_LIMIT: u64 = 64 * 1024;

/// The bash manager's script under the Phoenix tree whose `etc` is
/// `phoenix_etc`.
pub fn manager_script(phoenix_etc: &Path) -> PathBuf {
    phoenix_etc
        .parent()
        .unwrap_or(phoenix_etc)
        .join("bin/managers/certificate-renewal-manager.sh")
}

/// One warning per bash manager still in place.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let cron = &config.renewal.legacy_cron_file;
    if let Ok(text) = fsutil::read_limited(cron, READ_LIMIT) {
        let active = String::from_utf8_lossy(&text)
            .lines()
            .map(str::trim)
            .any(|l| !l.is_empty() && !l.starts_with('#') && !l.contains('='));
        if active {
            out.push(format!(
                "the bash managers' cron job '{}' is still installed: it renews the same \
                 certificates without phoenix-renew's lock; retire it with `rm {}` (README \
                 \"Moving from the bash managers\")",
                cron.display(),
                cron.display()
            ));
        }
    }
    let script = manager_script(&config.phoenix_etc);
    if let Ok(text) = fsutil::read_limited(&script, READ_LIMIT) {
        // Retired: replaced by a script that hands over to phoenix-renew.
        if !String::from_utf8_lossy(&text).contains("phoenix-renew") {
            out.push(format!(
                "the bash certificate manager '{}' is still installed: `phoenix create` runs \
                 it without phoenix-renew's lock; replace it with a script that runs \
                 `systemctl start phoenix-renew.service` (README \"Moving from the bash \
                 managers\")",
                script.display()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        let mut c = Config {
            phoenix_etc: dir.join("phoenix/etc"),
            ..Default::default()
        };
        c.renewal.legacy_cron_file = dir.join("cron.d/phoenix-cert-renewal");
        c
    }

    #[test]
    fn the_cron_file_and_the_manager_are_named_until_retired() {
        let d = tempfile::tempdir().unwrap();
        let c = config(d.path());
        assert!(warnings(&c).is_empty());
        std::fs::create_dir_all(d.path().join("cron.d")).unwrap();
        let cron = d.path().join("cron.d/phoenix-cert-renewal");
        std::fs::write(
            &cron,
            "0 * * * * root /usr/local/phoenix_hypervisor/bin/managers/certificate-renewal-manager.sh\n",
        )
        .unwrap();
        let script = manager_script(&c.phoenix_etc);
        std::fs::create_dir_all(script.parent().unwrap()).unwrap();
        std::fs::write(&script, "#!/bin/bash\nstep ca renew ...\n").unwrap();
        let w = warnings(&c);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains(&format!("rm {}", cron.display())), "{}", w[0]);
        assert!(w[1].contains(&script.display().to_string()), "{}", w[1]);
        // Commented out, and handed over to phoenix-renew: retired.
        std::fs::write(&cron, "# retired\nMAILTO=root\n").unwrap();
        std::fs::write(
            &script,
            "#!/bin/sh\nexec systemctl start phoenix-renew.service\n",
        )
        .unwrap();
        assert!(warnings(&c).is_empty());
    }
}
