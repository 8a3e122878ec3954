//! Backend `qemu`: boots a user-supplied Intel macOS disk image with a
//! user-supplied OpenCore image under QEMU/KVM on a Linux host, the way
//! [OSX-KVM](https://github.com/kholia/OSX-KVM)'s `OpenCore-Boot.sh` does:
//! q35, `isa-applesmc` with the OSK string, OVMF code (read-only) and vars as
//! pflash, `-cpu Penryn,kvm=on,vendor=GenuineIntel,+invtsc,vmware-cpuid-freq=on,…`
//! (Haswell-noTSX for Sonoma and later), the OpenCore and macOS disks on an
//! ICH9 AHCI controller. Differences from the script, for unattended runs: every
//! disk is attached with `snapshot=on` (writes go to a temporary overlay and are
//! dropped when QEMU exits, so each run starts from the same image), the OVMF vars
//! are a per-run copy, user networking forwards only `127.0.0.1:PORT` to the
//! guest's port 22, the serial console goes to a log file (scanned for panic
//! lines), and there is no display or monitor.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Apple SMC's OSK string as OSX-KVM passes it (public, from QEMU's docs).
pub const APPLE_OSK: &str = "ourhardworkbythesewordsguardedpleasedontsteal(c)AppleComputerInc";

/// OSX-KVM's `MY_OPTIONS` CPU flags.
pub const OSX_KVM_CPU_FLAGS: &str = "+ssse3,+sse4.2,+popcnt,+avx,+aes,+xsave,+xsaveopt,check";

/// The `[qemu]` table of vm.toml.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// QEMU binary (default `qemu-system-x86_64`).
    #[serde(default = "default_binary")]
    pub binary: String,
    /// The macOS system disk (qcow2 as OSX-KVM creates it; raw with `disk_format`).
    pub disk: PathBuf,
    #[serde(default = "default_qcow2")]
    pub disk_format: String,
    /// OpenCore boot image (OSX-KVM: `OpenCore/OpenCore.qcow2`).
    pub opencore: PathBuf,
    /// OVMF firmware code (OSX-KVM: `OVMF_CODE.fd`).
    pub ovmf_code: PathBuf,
    /// OVMF variables template (OSX-KVM: `OVMF_VARS-1920x1080.fd`); copied per run.
    pub ovmf_vars: PathBuf,
    /// CPU model: `Penryn` (OSX-KVM's choice up to Ventura), `Haswell-noTSX` (Sonoma+) or `host`.
    #[serde(default = "default_cpu")]
    pub cpu: String,
    #[serde(default = "default_ram")]
    pub ram_mib: u32,
    #[serde(default = "default_smp")]
    pub smp: u32,
    /// Host port forwarded to the guest's ssh (127.0.0.1 only).
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    /// Serial console log (default target/vm/qemu-serial.log).
    pub serial_log: Option<PathBuf>,
    /// Seconds to wait for ssh after starting QEMU.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_secs: u64,
    /// Extra arguments appended verbatim.
    #[serde(default)]
    pub extra_args: Vec<String>,
}

fn default_binary() -> String {
    "qemu-system-x86_64".into()
}
fn default_qcow2() -> String {
    "qcow2".into()
}
fn default_cpu() -> String {
    "Penryn".into()
}
fn default_ram() -> u32 {
    4096
}
fn default_smp() -> u32 {
    2
}
fn default_ssh_port() -> u16 {
    2222
}
fn default_boot_timeout() -> u64 {
    600
}

impl QemuConfig {
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_secs)
    }
}

/// The per-run files the command line refers to.
#[derive(Debug, Clone)]
pub struct RunFiles {
    /// The writable copy of the OVMF vars.
    pub ovmf_vars: PathBuf,
    pub serial_log: PathBuf,
}

/// The QEMU command line (without the binary), a pure function of its inputs.
pub fn command_line(cfg: &QemuConfig, files: &RunFiles) -> Vec<String> {
    let cpu = if cfg.cpu == "host" {
        format!("host,kvm=on,vendor=GenuineIntel,+invtsc,vmware-cpuid-freq=on,{OSX_KVM_CPU_FLAGS}")
    } else {
        format!(
            "{},kvm=on,vendor=GenuineIntel,+invtsc,vmware-cpuid-freq=on,{OSX_KVM_CPU_FLAGS}",
            cfg.cpu
        )
    };
    let mut a: Vec<String> = vec![
        "-enable-kvm".into(),
        "-m".into(),
        cfg.ram_mib.to_string(),
        "-cpu".into(),
        cpu,
        "-machine".into(),
        "q35".into(),
        "-smp".into(),
        format!("{},cores={},sockets=1", cfg.smp, cfg.smp),
        "-device".into(),
        "qemu-xhci,id=xhci".into(),
        "-device".into(),
        "usb-kbd,bus=xhci.0".into(),
        "-device".into(),
        "usb-tablet,bus=xhci.0".into(),
        "-device".into(),
        format!("isa-applesmc,osk={APPLE_OSK}"),
        "-drive".into(),
        format!(
            "if=pflash,format=raw,readonly=on,file={}",
            cfg.ovmf_code.display()
        ),
        "-drive".into(),
        format!("if=pflash,format=raw,file={}", files.ovmf_vars.display()),
        "-smbios".into(),
        "type=2".into(),
        "-device".into(),
        "ich9-ahci,id=sata".into(),
        "-drive".into(),
        format!(
            "id=OpenCoreBoot,if=none,snapshot=on,format=qcow2,file={}",
            cfg.opencore.display()
        ),
        "-device".into(),
        "ide-hd,bus=sata.2,drive=OpenCoreBoot,bootindex=1".into(),
        "-drive".into(),
        format!(
            "id=MacHDD,if=none,snapshot=on,format={},file={}",
            cfg.disk_format,
            cfg.disk.display()
        ),
        "-device".into(),
        "ide-hd,bus=sata.4,drive=MacHDD".into(),
        "-netdev".into(),
        format!("user,id=net0,hostfwd=tcp:127.0.0.1:{}-:22", cfg.ssh_port),
        "-device".into(),
        "virtio-net-pci,netdev=net0,id=net0,mac=52:54:00:c9:18:27".into(),
        "-serial".into(),
        format!("file:{}", files.serial_log.display()),
        "-display".into(),
        "none".into(),
        "-vga".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
    ];
    a.extend(cfg.extra_args.iter().cloned());
    a
}

/// Checks everything the run needs before starting anything; the error names
/// each missing piece.
pub fn preflight(cfg: &QemuConfig, kvm: &Path) -> Result<(), String> {
    let mut missing = Vec::new();
    if !kvm.exists() {
        missing.push(format!(
            "{} does not exist: KVM is not available (enable virtualisation in the firmware, load kvm_intel/kvm_amd; nested VMs need nested virtualisation)",
            kvm.display()
        ));
    } else if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm)
        .is_err()
    {
        missing.push(format!(
            "{} is not readable and writable by this user (add the user to the `kvm` group)",
            kvm.display()
        ));
    }
    for (what, p) in [
        ("macOS disk image (qemu.disk)", &cfg.disk),
        ("OpenCore image (qemu.opencore)", &cfg.opencore),
        ("OVMF code (qemu.ovmf_code)", &cfg.ovmf_code),
        ("OVMF vars (qemu.ovmf_vars)", &cfg.ovmf_vars),
    ] {
        if !p.is_file() {
            missing.push(format!("no {what} at {}", p.display()));
        }
    }
    if !on_path(&cfg.binary) {
        missing.push(format!(
            "`{}` not found (Debian: apt-get install qemu-system-x86)",
            cfg.binary
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the qemu backend cannot start:\n  - {}",
            missing.join("\n  - ")
        ))
    }
}

fn on_path(prog: &str) -> bool {
    if prog.contains('/') {
        return Path::new(prog).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Lines of the serial console that show a kernel panic (macOS prints them there
/// when the guest boots with `serial=3` / `debug=` boot-args, see docs/real-macos.md).
pub fn panic_lines(serial: &str) -> Vec<String> {
    serial
        .lines()
        .filter(|l| {
            l.contains("panic(cpu")
                || l.contains("Kernel panic")
                || l.contains("Debugger called: <panic>")
                || l.contains("Panicked task")
                || l.contains("Kernel Extensions in backtrace")
        })
        .map(|l| l.trim_end().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> QemuConfig {
        QemuConfig {
            binary: default_binary(),
            disk: "/vm/mac_hdd_ng.img".into(),
            disk_format: default_qcow2(),
            opencore: "/vm/OpenCore/OpenCore.qcow2".into(),
            ovmf_code: "/vm/OVMF_CODE.fd".into(),
            ovmf_vars: "/vm/OVMF_VARS-1920x1080.fd".into(),
            cpu: default_cpu(),
            ram_mib: 8192,
            smp: 4,
            ssh_port: 2222,
            serial_log: None,
            boot_timeout_secs: 600,
            extra_args: vec![],
        }
    }

    /// The OSX-KVM conventions (OpenCore-Boot.sh), each checked as an adjacent pair.
    #[test]
    fn qemu_command_line_follows_osx_kvm_conventions() {
        let files = RunFiles {
            ovmf_vars: "/run/vars.fd".into(),
            serial_log: "/run/serial.log".into(),
        };
        let a = command_line(&cfg(), &files);
        let pair = |k: &str, v: &str| {
            assert!(
                a.windows(2).any(|w| w[0] == k && w[1] == v),
                "missing `{k} {v}` in {a:?}"
            );
        };
        assert!(a.contains(&"-enable-kvm".to_string()));
        pair("-machine", "q35");
        pair("-m", "8192");
        pair(
            "-cpu",
            "Penryn,kvm=on,vendor=GenuineIntel,+invtsc,vmware-cpuid-freq=on,+ssse3,+sse4.2,+popcnt,+avx,+aes,+xsave,+xsaveopt,check",
        );
        pair("-device", &format!("isa-applesmc,osk={APPLE_OSK}"));
        assert_eq!(APPLE_OSK.len(), 64);
        pair(
            "-drive",
            "if=pflash,format=raw,readonly=on,file=/vm/OVMF_CODE.fd",
        );
        pair("-drive", "if=pflash,format=raw,file=/run/vars.fd");
        // The OVMF code precedes the vars (pflash unit 0 and 1).
        let code = a.iter().position(|s| s.contains("OVMF_CODE")).unwrap();
        let vars = a.iter().position(|s| s.contains("vars.fd")).unwrap();
        assert!(code < vars);
        // The template vars file is never written.
        assert!(!a.iter().any(|s| s.contains("OVMF_VARS-1920x1080")));
        pair("-smbios", "type=2");
        pair("-device", "ich9-ahci,id=sata");
        pair(
            "-drive",
            "id=OpenCoreBoot,if=none,snapshot=on,format=qcow2,file=/vm/OpenCore/OpenCore.qcow2",
        );
        pair(
            "-device",
            "ide-hd,bus=sata.2,drive=OpenCoreBoot,bootindex=1",
        );
        pair(
            "-drive",
            "id=MacHDD,if=none,snapshot=on,format=qcow2,file=/vm/mac_hdd_ng.img",
        );
        pair("-device", "ide-hd,bus=sata.4,drive=MacHDD");
        pair("-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22");
        pair(
            "-device",
            "virtio-net-pci,netdev=net0,id=net0,mac=52:54:00:c9:18:27",
        );
        pair("-serial", "file:/run/serial.log");
        pair("-monitor", "none");
        // Every disk is a throw-away snapshot.
        for d in a.iter().filter(|s| s.contains("if=none")) {
            assert!(d.contains("snapshot=on"), "{d}");
        }
        let mut c = cfg();
        c.cpu = "Haswell-noTSX".into();
        assert!(
            command_line(&c, &files)
                .iter()
                .any(|s| s.starts_with("Haswell-noTSX,kvm=on,vendor=GenuineIntel,+invtsc"))
        );
    }

    #[test]
    fn qemu_preflight_names_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.binary = "/nonexistent/qemu-system-x86_64".into();
        let e = preflight(&c, &d.path().join("no-kvm")).unwrap_err();
        for needle in [
            "no-kvm does not exist: KVM is not available",
            "no macOS disk image (qemu.disk) at /vm/mac_hdd_ng.img",
            "no OpenCore image (qemu.opencore)",
            "no OVMF code (qemu.ovmf_code)",
            "no OVMF vars (qemu.ovmf_vars)",
            "`/nonexistent/qemu-system-x86_64` not found",
        ] {
            assert!(e.contains(needle), "{needle} not in {e}");
        }
        // Only the image missing: only the image is named.
        for f in ["kvm", "code.fd", "vars.fd", "oc.qcow2", "qemu"] {
            std::fs::write(d.path().join(f), b"").unwrap();
        }
        c.binary = d.path().join("qemu").display().to_string();
        c.ovmf_code = d.path().join("code.fd");
        c.ovmf_vars = d.path().join("vars.fd");
        c.opencore = d.path().join("oc.qcow2");
        let e = preflight(&c, &d.path().join("kvm")).unwrap_err();
        assert!(e.contains("no macOS disk image"), "{e}");
        assert_eq!(e.matches("\n  - ").count(), 1, "{e}");
    }

    #[test]
    fn qemu_serial_console_panic_lines_are_found() {
        let serial = "AppleACPICPU: ProcessorId=1\npanic(cpu 0 caller 0xffffff8012345678): \"prx\"@/src/x.c:1\nDebugger called: <panic>\n      Kernel Extensions in backtrace:\n         net.prx.kext.SocketFilter(0.1)\nok\n";
        let l = panic_lines(serial);
        assert_eq!(l.len(), 3, "{l:?}");
        assert!(l[0].starts_with("panic(cpu 0"));
        assert!(panic_lines("login: ok\n").is_empty());
    }
}
