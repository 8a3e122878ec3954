//! `prxctl apply [FILE]`: bring both kexts to a configuration
//! ([`crate::config`]), changing only what differs, and say what changed.
//!
//! Order: the whole file is validated and every kext it names is connected to
//! before anything is sent (a bad file or a missing kext changes nothing);
//! then per kext: disable first if it is to be off, proxies (unless prxd sets
//! them: [`KextConfig::proxies`] is `None`), NAT timeouts,
//! rules, enable last if it is to be on — so a kext never filters with half
//! a configuration.
//!
//! The kexts report their rule count and a generation (rule sets installed
//! since start) but not the rules themselves, so `apply` remembers what it
//! installed: `<state dir>/<control name>.applied` holds the generation the
//! kext reported right after and the encoded rule set. The rules are
//! unchanged when the kext still reports that generation and rule count and
//! the file's rule set encodes to the same bytes; anything else sends them
//! again (an atomic replacement). The state directory, `/var/run/prx` by
//! default, is emptied by macOS at every boot, when the kexts start empty.

use std::io;
use std::path::{Path, PathBuf};

use common::net::control;
use common::net::policy::Proxies;

use crate::config::{Config, KextConfig};
use crate::transport::Transport;

/// Where `apply` remembers the rule sets it installed.
pub const DEFAULT_STATE_DIR: &str = "/var/run/prx";

/// A kext `prx.toml` configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kext {
    /// Its table in `prx.toml`.
    pub table: &'static str,
    /// Its kern_control name.
    pub control: &'static str,
    /// Its bundle in `/Library/Extensions`.
    pub bundle: &'static str,
}

/// Both kexts, in apply order.
pub const KEXTS: [Kext; 2] = [
    Kext {
        table: "socket-filter",
        control: control::CONTROL_NAME,
        bundle: "PrxSocketFilter.kext",
    },
    Kext {
        table: "ip-filter",
        control: control::IP_CONTROL_NAME,
        bundle: "PrxIPFilter.kext",
    },
];

/// The part of `config` for `kext`.
pub fn part<'a>(config: &'a Config, kext: &Kext) -> Option<&'a KextConfig> {
    match kext.table {
        "socket-filter" => config.socket_filter.as_ref(),
        _ => config.ip_filter.as_ref(),
    }
}

/// A configuration's summary, for `apply --check`.
pub fn summary(config: &Config) -> String {
    let mut parts = Vec::new();
    for k in &KEXTS {
        match part(config, k) {
            None => parts.push(format!("{}: not configured", k.table)),
            Some(c) => parts.push(format!(
                "{}: {}, {}, proxies {}{}",
                k.table,
                if c.enabled { "enabled" } else { "disabled" },
                crate::render_rules(&c.rules),
                c.proxies
                    .as_ref()
                    .map_or_else(|| "set by prxd".to_string(), render_proxies),
                c.timeouts
                    .map(|t| format!(", timeouts {}", crate::render_timeouts(&t).trim_end()))
                    .unwrap_or_default()
            )),
        }
    }
    parts.join("; ")
}

/// Proxies, for people.
pub fn render_proxies(p: &Proxies) -> String {
    let mut parts: Vec<String> = [p.v4, p.v6]
        .iter()
        .flatten()
        .map(|e| crate::socket_addr(e).to_string())
        .collect();
    if parts.is_empty() {
        parts.push("none".into());
    }
    if let Some(pid) = p.pid {
        parts.push(format!("pid {pid}"));
    }
    if let Some(n) = &p.name {
        parts.push(format!("process {}", String::from_utf8_lossy(n.as_bytes())));
    }
    parts.join(" ")
}

fn encoded_rules(c: &KextConfig) -> io::Result<Vec<u8>> {
    let len = control::rules_len(c.rules.rules.len())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many rules"))?;
    let mut buf = vec![0u8; len];
    let n = control::encode_rules(c.rules.default, &c.rules.rules, &mut buf).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("control protocol: {e:?}"),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The memory file of a kext.
pub fn memory_path(state_dir: &Path, kext: &Kext) -> PathBuf {
    state_dir.join(format!("{}.applied", kext.control))
}

fn remembered(path: &Path) -> Option<(u32, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let generation = lines.next()?.strip_prefix("generation ")?.parse().ok()?;
    let rules = lines.next()?.strip_prefix("rules ")?.to_string();
    Some((generation, rules))
}

/// Brings one kext to `want`. Returns what changed (empty: nothing did).
/// A memory file that cannot be written is reported as a warning line; the
/// kext is configured all the same.
pub fn apply_kext(
    t: &mut dyn Transport,
    kext: &Kext,
    want: &KextConfig,
    state_dir: &Path,
) -> io::Result<Vec<String>> {
    let mut changed = Vec::new();
    let current = crate::status(t)?;
    if !want.enabled && current.enabled {
        crate::set_enabled(t, false)?;
        changed.push("disabled".to_string());
    }
    // `None`: prxd owns this kext's proxies (it registers at every start);
    // apply never overwrites them.
    if let Some(want_proxies) = want.proxies.as_ref().filter(|p| **p != current.proxies) {
        crate::set_proxies(t, want_proxies)?;
        changed.push(format!(
            "proxies {} (were {})",
            render_proxies(want_proxies),
            render_proxies(&current.proxies)
        ));
    }
    if let Some(to) = &want.timeouts {
        let now = crate::timeouts(t)?;
        if now != *to {
            crate::set_timeouts(t, to)?;
            changed.push(format!(
                "NAT timeouts {} (were {})",
                crate::render_timeouts(to).trim_end(),
                crate::render_timeouts(&now).trim_end()
            ));
        }
    }
    let bytes = hex(&encoded_rules(want)?);
    let memory = memory_path(state_dir, kext);
    let count = u32::try_from(want.rules.rules.len()).unwrap_or(u32::MAX);
    let same_rules = remembered(&memory).is_some_and(|(generation, rules)| {
        generation == current.generation && current.rules == count && rules == bytes
    });
    if !same_rules {
        crate::load_rules(t, &want.rules)?;
        let after = crate::status(t)?;
        changed.push(format!("rules: {}", crate::render_rules(&want.rules)));
        let write = std::fs::create_dir_all(state_dir).and_then(|()| {
            let tmp = memory.with_extension("tmp");
            std::fs::write(
                &tmp,
                format!("generation {}\nrules {bytes}\n", after.generation),
            )?;
            std::fs::rename(&tmp, &memory)
        });
        if let Err(e) = write {
            changed.push(format!(
                "warning: cannot remember the rule set in {} ({e}); the next apply sends it again",
                memory.display()
            ));
        }
    }
    if want.enabled && !current.enabled {
        crate::set_enabled(t, true)?;
        changed.push("enabled".to_string());
    }
    Ok(changed)
}

/// The command that loads `kext` on macOS `major`: `kmutil load -p` from
/// macOS 11, `kextload` before.
pub fn load_command(major: u32, kext: &Kext) -> (String, Vec<String>) {
    let path = format!("/Library/Extensions/{}", kext.bundle);
    if major >= 11 {
        (
            "/usr/bin/kmutil".into(),
            vec!["load".into(), "-p".into(), path],
        )
    } else {
        ("/sbin/kextload".into(), vec![path])
    }
}

/// The running macOS's major version (`sw_vers -productVersion`).
pub fn macos_major() -> io::Result<u32> {
    let out = std::process::Command::new("/usr/bin/sw_vers")
        .arg("-productVersion")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("sw_vers -productVersion said {:?}", text.trim()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_commands() {
        let (p, a) = load_command(14, &KEXTS[1]);
        assert_eq!(p, "/usr/bin/kmutil");
        assert_eq!(a, ["load", "-p", "/Library/Extensions/PrxIPFilter.kext"]);
        let (p, a) = load_command(10, &KEXTS[0]);
        assert_eq!(p, "/sbin/kextload");
        assert_eq!(a, ["/Library/Extensions/PrxSocketFilter.kext"]);
    }

    #[test]
    fn summary_of_the_example() {
        let c = crate::config::parse(include_str!("../prx.toml.example")).unwrap();
        let s = summary(&c);
        assert!(s.starts_with("socket-filter: disabled, 2 rules, default direct, proxies set by prxd; ip-filter: disabled, 1 rules"), "{s}");
    }
}
