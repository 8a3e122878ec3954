//! prxd: the proxy end of prx's redirect.
//!
//! The kexts redirect connections to prxd's listen addresses; prxd recovers
//! each one's original destination — from the PROXY v2 header the socket
//! filter writes (`proxy-v2` rules), or by asking the kext's control for the
//! client address (`proxy` rules and the IP filter's NAT flows) through
//! prxctl's library — and forwards it per route: `direct`, or through a named
//! SOCKS5 or HTTP CONNECT upstream. See docs/prxd.md.
//!
//! - [`config`]: the `[prxd]` table.
//! - [`upstream`]: SOCKS5 and HTTP CONNECT handshakes.
//! - [`kext`]: the kexts' controls (registering, lookups).
//! - [`server`]: listeners, connections, reload.
//! - [`stats`]: counters; [`status`] serves and reads them.
//! - [`privs`]: dropping root.

pub mod config;
pub mod kext;
pub mod privs;
pub mod server;
pub mod stats;
pub mod udp;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

use config::Config;
use kext::Controls;
use server::{Daemon, log};

/// How prxd was started.
pub struct Start {
    /// The configuration.
    pub config: Config,
    /// Its file (SIGHUP re-reads it), if any.
    pub config_path: Option<PathBuf>,
    /// The KPI emulator's control bridge instead of the real controls.
    pub emu: Option<PathBuf>,
}

/// The status socket: serves the counters to `prxd status`.
pub mod status {
    use super::*;

    /// Serves `d`'s counters on `path` (replacing a stale socket).
    pub fn serve(d: Arc<Daemon>, path: &Path) -> anyhow::Result<()> {
        if path.exists() {
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale status socket {}", path.display()))?;
        }
        let l = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("status socket {}", path.display()))?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let cfg = d.config();
                let text = format!(
                    "{}uptime_s {}\nmax_connections {}\n",
                    d.stats.render(),
                    d.uptime(),
                    cfg.max_connections
                );
                let _ = s.write_all(text.as_bytes()).await;
            }
        });
        Ok(())
    }

    /// Reads the counters from a running prxd's status socket.
    pub fn read(path: &Path) -> anyhow::Result<String> {
        use std::io::Read;
        let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
            format!(
                "cannot reach prxd's status socket {} (is prxd running, with `status_socket` set?)",
                path.display()
            )
        })?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }
}

/// Runs prxd until SIGTERM/SIGINT (then drains); returns the exit code.
pub fn run(start: Start) -> anyhow::Result<i32> {
    let cfg = start.config;
    // Two descriptors per connection: the soft limit (256 for launchd's
    // daemons on macOS, often 1024 on Linux) would cap prxd far below
    // `max_connections`.
    let (was, now) = privs::raise_nofile();
    if now > was {
        log(&format!("descriptor limit raised from {was} to {now}"));
    }
    if (now as usize) < 2 * cfg.max_connections + 64 {
        log(&format!(
            "the descriptor limit ({now}) holds about {} connections, fewer than max_connections ({})",
            now.saturating_sub(64) / 2,
            cfg.max_connections
        ));
    }
    // 1. The privileged controls, opened while still root.
    let (controls, errors) = if cfg.controls.is_empty() {
        (Controls::none(), Vec::new())
    } else {
        Controls::open(&cfg.controls, start.emu.as_deref())
    };
    for e in &errors {
        log(&format!("cannot open {e}"));
    }
    if controls.is_empty() && !cfg.controls.is_empty() {
        if cfg.trust_header {
            log(
                "no kext control: only connections with a PROXY v2 header are served (trust_header)",
            );
        } else {
            bail!(
                "no kext control could be opened ({}), so no original destination can be recovered: run as root with the kexts loaded, or accept PROXY v2 headers without the kext's word (--trust-header, `trust_header = true`)",
                errors.join("; ")
            );
        }
    }
    // 2. Registered as the proxy process: our own connections stay direct.
    controls.register(&cfg.listen).map_err(anyhow::Error::msg)?;
    if !controls.is_empty() {
        log(&format!(
            "registered with {} as the proxy (pid {}, name {})",
            controls
                .kexts()
                .iter()
                .map(|k| kext::kext_name(*k))
                .collect::<Vec<_>>()
                .join(" and "),
            std::process::id(),
            kext::PROCESS_NAME
        ));
    }
    // The key that proves a PROXY v2 header is the socket filter's.
    let auth_key = controls.auth_key().map_err(anyhow::Error::msg)?;
    if auth_key.is_some() {
        log("PROXY v2 headers are verified with PrxSocketFilter's per-boot key");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let user = cfg.user.clone();
    let status_path = cfg.status_socket.clone();
    let d = Daemon::new(cfg, controls, start.config_path, auth_key);
    rt.block_on(async move {
        // 3. Listeners and the status socket, still privileged (low ports).
        d.apply_listeners().await.map_err(anyhow::Error::msg)?;
        if let Some(p) = &status_path {
            status::serve(Arc::clone(&d), p)?;
        }
        // 4. Drop root.
        match (&user, privs::is_root()) {
            (Some(u), true) => {
                let ids = privs::lookup_user(u).map_err(anyhow::Error::msg)?;
                privs::drop_to(ids)
                    .map_err(|e| anyhow::anyhow!("dropping privileges to `{u}`: {e}"))?;
                log(&format!(
                    "dropped privileges to {u} (uid {}, gid {})",
                    ids.uid, ids.gid
                ));
            }
            (None, true) => log("running as root: set `user` in [prxd] to drop privileges"),
            _ => {}
        }
        serve_signals(&d).await
    })
}

async fn serve_signals(d: &Arc<Daemon>) -> anyhow::Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => d.reload().await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    d.stop_listening();
    let active = d.stats.active.load(std::sync::atomic::Ordering::Relaxed);
    let limit = d.config().drain_timeout;
    log(&format!(
        "stopping: draining {active} connection(s) for up to {} s",
        limit.as_secs()
    ));
    let start = Instant::now();
    while d.stats.active.load(std::sync::atomic::Ordering::Relaxed) > 0 && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = d.stats.active.load(std::sync::atomic::Ordering::Relaxed);
    if let Some(p) = &d.config().status_socket {
        let _ = std::fs::remove_file(p);
    }
    log(&format!(
        "stopped ({left} connection(s) cut at the drain timeout)"
    ));
    Ok(0)
}
