//! Backend `vmware`: VMware Fusion (Intel Mac) or Workstation through `vmrun`:
//! revert to a prepared snapshot, start headless, ask VMware Tools for the guest's
//! IP address, run the guest flow over ssh, stop. The command lines are pure
//! functions; see the tests.

use std::path::PathBuf;
use std::time::Duration;

/// The `[vmware]` table of vm.toml.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmwareConfig {
    /// `vmrun` binary (Fusion: /Applications/VMware Fusion.app/Contents/Library/vmrun).
    #[serde(default = "default_vmrun")]
    pub vmrun: String,
    /// `-T` host type: `fusion` or `ws`.
    #[serde(default = "default_host_type")]
    pub host_type: String,
    /// The VM's .vmx file.
    pub vmx: PathBuf,
    /// Snapshot to revert to before every run (taken after SIP/approval preparation).
    pub snapshot: String,
    /// Show the VM window (default: nogui).
    #[serde(default)]
    pub gui: bool,
    /// Seconds to wait for VMware Tools to report an IP and for ssh.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_secs: u64,
}

fn default_vmrun() -> String {
    "vmrun".into()
}
fn default_host_type() -> String {
    "fusion".into()
}
fn default_boot_timeout() -> u64 {
    600
}

impl VmwareConfig {
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_secs)
    }
    fn base(&self) -> Vec<String> {
        vec!["-T".into(), self.host_type.clone()]
    }
    /// `vmrun -T fusion revertToSnapshot VMX SNAPSHOT`
    pub fn revert_args(&self) -> Vec<String> {
        let mut v = self.base();
        v.extend([
            "revertToSnapshot".into(),
            self.vmx.display().to_string(),
            self.snapshot.clone(),
        ]);
        v
    }
    /// `vmrun -T fusion start VMX nogui|gui`
    pub fn start_args(&self) -> Vec<String> {
        let mut v = self.base();
        v.extend([
            "start".into(),
            self.vmx.display().to_string(),
            if self.gui { "gui" } else { "nogui" }.into(),
        ]);
        v
    }
    /// `vmrun -T fusion getGuestIPAddress VMX -wait` (needs VMware Tools in the guest)
    pub fn guest_ip_args(&self) -> Vec<String> {
        let mut v = self.base();
        v.extend([
            "getGuestIPAddress".into(),
            self.vmx.display().to_string(),
            "-wait".into(),
        ]);
        v
    }
    /// `vmrun -T fusion stop VMX soft|hard`
    pub fn stop_args(&self, hard: bool) -> Vec<String> {
        let mut v = self.base();
        v.extend([
            "stop".into(),
            self.vmx.display().to_string(),
            if hard { "hard" } else { "soft" }.into(),
        ]);
        v
    }
}

/// Reads `getGuestIPAddress`'s answer: one IPv4/IPv6 address, or an error text.
pub fn parse_guest_ip(out: &str) -> Result<String, String> {
    let s = out.trim();
    if s.parse::<std::net::IpAddr>().is_ok() {
        Ok(s.to_string())
    } else {
        Err(format!(
            "vmrun getGuestIPAddress did not return an address: `{s}` (is VMware Tools installed in the guest?)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrun_command_lines() {
        let c = VmwareConfig {
            vmrun: default_vmrun(),
            host_type: "fusion".into(),
            vmx: "/VMs/macOS 13.vmwarevm/macOS 13.vmx".into(),
            snapshot: "prx-ready".into(),
            gui: false,
            boot_timeout_secs: 600,
        };
        let vmx = "/VMs/macOS 13.vmwarevm/macOS 13.vmx";
        assert_eq!(
            c.revert_args(),
            ["-T", "fusion", "revertToSnapshot", vmx, "prx-ready"]
        );
        assert_eq!(c.start_args(), ["-T", "fusion", "start", vmx, "nogui"]);
        assert_eq!(
            c.guest_ip_args(),
            ["-T", "fusion", "getGuestIPAddress", vmx, "-wait"]
        );
        assert_eq!(c.stop_args(false), ["-T", "fusion", "stop", vmx, "soft"]);
        assert_eq!(c.stop_args(true), ["-T", "fusion", "stop", vmx, "hard"]);
        assert_eq!(parse_guest_ip("192.168.64.5\n").unwrap(), "192.168.64.5");
        assert!(
            parse_guest_ip("Error: The VMware Tools are not running")
                .unwrap_err()
                .contains("VMware Tools")
        );
    }
}
