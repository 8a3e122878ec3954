//! `vm.toml`: the configuration of the real-macOS backends (see `vm.example.toml`).
//! No secrets: ssh authenticates with keys (a key file or the agent); passwords
//! are never read or stored. Relative paths are relative to the file's directory;
//! `~/` is the home directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::guest::{self, GuestConfig, GuestKext};
use super::qemu::QemuConfig;
use super::ssh::{HostKeyPolicy, SshTarget};
use super::vmware::VmwareConfig;

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Backend used when `--backend` is not given.
    pub backend: Option<String>,
    #[serde(default)]
    pub ssh: SshSection,
    #[serde(default)]
    pub guest: GuestSection,
    pub qemu: Option<QemuConfig>,
    pub vmware: Option<VmwareConfig>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshSection {
    pub host: Option<String>,
    pub port: u16,
    pub user: Option<String>,
    /// Private key file; without it the ssh agent (or ssh's default keys) is used.
    pub identity: Option<PathBuf>,
    /// The known_hosts file for the guest (the only one consulted).
    pub known_hosts: PathBuf,
    pub host_key_checking: HostKeyPolicy,
    pub connect_timeout_secs: u64,
}

impl Default for SshSection {
    fn default() -> Self {
        SshSection {
            host: None,
            port: 22,
            user: None,
            identity: None,
            known_hosts: PathBuf::from("target/vm/known_hosts"),
            host_key_checking: HostKeyPolicy::Yes,
            connect_timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestSection {
    pub work_dir: String,
    pub command_timeout_secs: u64,
    pub install_timeout_secs: u64,
    pub listener_port: u16,
    pub redirect_from: String,
    pub panic_report_dirs: Vec<String>,
    pub kexts: Vec<GuestKext>,
}

impl Default for GuestSection {
    fn default() -> Self {
        let g = GuestConfig::new(PathBuf::new());
        GuestSection {
            work_dir: g.work_dir,
            command_timeout_secs: g.command_timeout.as_secs(),
            install_timeout_secs: g.install_timeout.as_secs(),
            listener_port: g.listener_port,
            redirect_from: g.redirect_from,
            panic_report_dirs: g.panic_report_dirs,
            kexts: guest::default_kexts(),
        }
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    base.join(p)
}

impl VmConfig {
    /// Parses `text`, resolving relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<VmConfig, String> {
        let mut c: VmConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.ssh.known_hosts = resolve(base, &c.ssh.known_hosts);
        c.ssh.identity = c.ssh.identity.as_deref().map(|p| resolve(base, p));
        if let Some(q) = &mut c.qemu {
            for p in [
                &mut q.disk,
                &mut q.opencore,
                &mut q.ovmf_code,
                &mut q.ovmf_vars,
            ] {
                *p = resolve(base, p);
            }
            q.serial_log = q.serial_log.as_deref().map(|p| resolve(base, p));
        }
        if let Some(v) = &mut c.vmware {
            v.vmx = resolve(base, &v.vmx);
        }
        Ok(c)
    }

    /// Reads and parses a vm.toml.
    pub fn load(path: &Path) -> Result<VmConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The ssh target; `host`/`port` given override the file (qemu: 127.0.0.1 and its forwarded port).
    pub fn ssh_target(&self, host: Option<&str>, port: Option<u16>) -> Result<SshTarget, String> {
        let host = host
            .map(String::from)
            .or_else(|| self.ssh.host.clone())
            .ok_or("no ssh host: set [ssh] host in vm.toml or pass --ssh USER@HOST[:PORT]")?;
        let user = self
            .ssh
            .user
            .clone()
            .ok_or("no ssh user: set [ssh] user in vm.toml or pass --ssh USER@HOST[:PORT]")?;
        Ok(SshTarget {
            host,
            port: port.unwrap_or(self.ssh.port),
            user,
            identity: self.ssh.identity.clone(),
            known_hosts: self.ssh.known_hosts.clone(),
            host_key_policy: self.ssh.host_key_checking,
            connect_timeout: Duration::from_secs(self.ssh.connect_timeout_secs),
        })
    }

    /// The guest flow's configuration for `pkg`.
    pub fn guest(&self, pkg: PathBuf) -> GuestConfig {
        let g = &self.guest;
        GuestConfig {
            kexts: g.kexts.clone(),
            work_dir: g.work_dir.clone(),
            command_timeout: Duration::from_secs(g.command_timeout_secs),
            install_timeout: Duration::from_secs(g.install_timeout_secs),
            panic_report_dirs: g.panic_report_dirs.clone(),
            listener_port: g.listener_port,
            redirect_from: g.redirect_from.clone(),
            prxctl: super::guest::DEFAULT_PRXCTL.into(),
            uninstaller: super::guest::DEFAULT_UNINSTALLER.into(),
            expect_version: super::guest::pkg_version(&pkg),
            pkg,
        }
    }
}

/// Parses `--ssh USER@HOST[:PORT]`.
pub fn parse_ssh_spec(s: &str) -> Result<(String, String, Option<u16>), String> {
    let (user, rest) = s
        .split_once('@')
        .ok_or_else(|| format!("`{s}`: expected USER@HOST[:PORT]"))?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            Some(
                p.parse::<u16>()
                    .map_err(|_| format!("`{s}`: bad port `{p}`"))?,
            ),
        ),
        _ => (rest.to_string(), None),
    };
    if user.is_empty() || host.is_empty() {
        return Err(format!("`{s}`: expected USER@HOST[:PORT]"));
    }
    Ok((user.to_string(), host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../../vm.example.toml");
        let c = VmConfig::parse(text, Path::new("/repo")).unwrap();
        assert_eq!(c.backend.as_deref(), Some("ssh"));
        let t = c.ssh_target(None, None).unwrap();
        assert_eq!(t.known_hosts, Path::new("/repo/target/vm/known_hosts"));
        let q = c.qemu.unwrap();
        assert!(q.disk.is_absolute());
        assert_eq!(c.vmware.unwrap().snapshot, "prx-ready");
        assert_eq!(c.guest.kexts.len(), 2);
    }

    #[test]
    fn ssh_specs_and_unknown_keys() {
        assert_eq!(
            parse_ssh_spec("admin@mac.local").unwrap(),
            ("admin".into(), "mac.local".into(), None)
        );
        assert_eq!(
            parse_ssh_spec("me@127.0.0.1:2222").unwrap(),
            ("me".into(), "127.0.0.1".into(), Some(2222))
        );
        assert!(parse_ssh_spec("mac.local").is_err());
        let e = VmConfig::parse("[ssh]\npassword = \"x\"\n", Path::new("/")).unwrap_err();
        assert!(e.contains("password"), "{e}");
    }
}
