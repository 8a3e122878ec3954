//! The kexts' controls, through prxctl's library: opening them (the real
//! kern_control on macOS, the KPI emulator's bridge with `--emu`), registering
//! prxd as the proxy process, and original-destination lookups.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;

use common::net::control::{CONTROL_NAME, IP_CONTROL_NAME};
use common::net::origdst::Original;
use common::net::policy::Proxies;
use common::net::rules::ProcName;
use prxctl::transport::Transport;

use crate::config::Kext;

/// The name prxd registers as its process name (macOS `p_comm`).
pub const PROCESS_NAME: &str = "prxd";

/// One open control.
pub struct Control {
    /// Which kext.
    pub kext: Kext,
    /// The connected control; `None` with the emulator's bridge, which serves
    /// one client at a time: there every use connects anew and lets go.
    t: Mutex<Option<Box<dyn Transport + Send>>>,
    emu: Option<std::path::PathBuf>,
}

impl Control {
    fn with<T>(&self, f: impl FnOnce(&mut dyn Transport) -> io::Result<T>) -> io::Result<T> {
        let mut g = self
            .t
            .lock()
            .map_err(|_| io::Error::other("control lock poisoned"))?;
        match (&mut *g, &self.emu) {
            (Some(t), _) => f(t.as_mut()),
            (None, emu) => {
                let mut t = connect(self.kext, emu.as_deref())?;
                f(t.as_mut())
            }
        }
    }
}

/// The open controls.
pub struct Controls {
    open: Vec<Control>,
}

fn control_name(k: Kext) -> &'static str {
    match k {
        Kext::Socket => CONTROL_NAME,
        Kext::Ip => IP_CONTROL_NAME,
    }
}

/// The kext's name for messages.
pub fn kext_name(k: Kext) -> &'static str {
    match k {
        Kext::Socket => "PrxSocketFilter",
        Kext::Ip => "PrxIPFilter",
    }
}

impl Controls {
    /// No controls (prxd trusts headers only).
    pub fn none() -> Self {
        Controls { open: Vec::new() }
    }

    /// Opens the controls of `kexts`: through the emulator bridge at `emu`, or
    /// (macOS) the real kern_control, which needs root. Returns the open ones
    /// and the errors of the others.
    pub fn open(kexts: &[Kext], emu: Option<&Path>) -> (Self, Vec<String>) {
        let mut open = Vec::new();
        let mut errors = Vec::new();
        for &k in kexts {
            match connect(k, emu) {
                Ok(t) => open.push(Control {
                    kext: k,
                    t: Mutex::new(if emu.is_some() { None } else { Some(t) }),
                    emu: emu.map(Path::to_path_buf),
                }),
                Err(e) => errors.push(format!(
                    "{} control ({}): {e}",
                    kext_name(k),
                    control_name(k)
                )),
            }
        }
        (Controls { open }, errors)
    }

    /// Whether any control is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Which kexts are open.
    pub fn kexts(&self) -> Vec<Kext> {
        self.open.iter().map(|c| c.kext).collect()
    }

    /// Registers prxd with every open kext as the proxy (its listen addresses,
    /// its pid and process name), so its own connections are never redirected.
    pub fn register(&self, listen: &[SocketAddr]) -> Result<(), String> {
        let p = Proxies {
            v4: listen
                .iter()
                .find(|a| a.is_ipv4())
                .map(|a| prxctl::endpoint(*a)),
            v6: listen
                .iter()
                .find(|a| a.is_ipv6())
                .map(|a| prxctl::endpoint(*a)),
            pid: Some(std::process::id()),
            name: Some(ProcName::new(PROCESS_NAME.as_bytes())),
        };
        for c in &self.open {
            c.with(|t| prxctl::set_proxies(t, &p)).map_err(|e| {
                format!(
                    "registering with {} as the proxy (pid {}): {e}",
                    kext_name(c.kext),
                    std::process::id()
                )
            })?;
        }
        Ok(())
    }

    /// The socket filter's PROXY v2 authentication key, if its control is
    /// open (asked once, at start, while prxd is still root).
    pub fn auth_key(&self) -> Result<Option<common::net::proxy_v2::AuthKey>, String> {
        match self.open.iter().find(|c| c.kext == Kext::Socket) {
            None => Ok(None),
            Some(c) => c
                .with(prxctl::auth_key)
                .map(Some)
                .map_err(|e| format!("reading PrxSocketFilter's PROXY v2 key: {e}")),
        }
    }

    /// Asks the kexts (in order) for the original destination of `client`.
    pub fn lookup(&self, client: SocketAddr) -> io::Result<Option<(Kext, Original)>> {
        let mut last_err = None;
        for c in &self.open {
            match c.with(|t| prxctl::lookup(t, client)) {
                Ok(Some(o)) => return Ok(Some((c.kext, o))),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

#[cfg(target_os = "macos")]
fn connect(k: Kext, emu: Option<&Path>) -> io::Result<Box<dyn Transport + Send>> {
    match emu {
        Some(p) => Ok(Box::new(prxctl::transport::EmuBridge::connect(
            p,
            control_name(k),
            0,
        )?)),
        None => Ok(Box::new(prxctl::transport::KernCtl::connect(
            control_name(k),
        )?)),
    }
}

#[cfg(not(target_os = "macos"))]
fn connect(k: Kext, emu: Option<&Path>) -> io::Result<Box<dyn Transport + Send>> {
    match emu {
        Some(p) => Ok(Box::new(prxctl::transport::EmuBridge::connect(
            p,
            control_name(k),
            0,
        )?)),
        None => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kexts' controls exist only on macOS (here: give --emu SOCKET for the KPI emulator's bridge)",
        )),
    }
}
