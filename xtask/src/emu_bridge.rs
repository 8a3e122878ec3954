//! `cargo xtask emu-bridge`: one command to try `prxctl` on Linux. Builds the
//! release kexts (as `cargo xtask build --release`), loads them in the KPI
//! emulator and serves their kern_controls on a Unix socket (the `ctl-bridge`
//! scenario, `vm/src/emu/scenarios/ctl_bridge.rs`) until `quit` or Ctrl-C, printing the
//! `prxctl --emu …` line to use.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Arguments of `cargo xtask emu-bridge`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Unix socket to serve on (default: <target>/emu-bridge.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Kext(s) to load: socket, ip (default: both).
    #[arg(long = "kext", value_name = "NAME")]
    pub kexts: Vec<String>,
    /// Stop serving after this many seconds without a `quit`.
    #[arg(long, value_name = "SECS", default_value_t = 8 * 3600)]
    pub serve_for: u64,
}

/// Runs `cargo xtask emu-bridge`.
pub fn run(root: &Path, args: Args) -> anyhow::Result<()> {
    for k in &args.kexts {
        if !["socket", "ip"].contains(&k.as_str()) {
            bail!("--kext {k}: no such kext (socket, ip)");
        }
    }
    let sock = match args.socket {
        Some(p) => p,
        None => crate::target_dir(root).join("emu-bridge.sock"),
    };
    if sock.exists() {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            bail!(
                "{}: a bridge is already serving there (prxctl --emu {} …; stop it with Ctrl-C) or pass --socket PATH",
                sock.display(),
                sock.display()
            );
        }
        std::fs::remove_file(&sock)
            .with_context(|| format!("{}: removing the stale socket", sock.display()))?;
    }
    if let Some(dir) = sock.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    eprintln!("emu-bridge: building the release kexts");
    let built = crate::build::build(
        root,
        &crate::build::BuildOptions {
            release: true,
            archs: vec![],
            kexts: args.kexts.clone(),
            target_dir: None,
        },
    )
    .context("building the kexts to load")?;
    let exe = std::env::current_exe().context("locating the xtask executable")?;
    let opts = vm::emu::RunOptions {
        runner: vm::emu::Runner {
            program: exe,
            args: vec![
                "vm-test".into(),
                "--emu-child".into(),
                "--ctl-bridge".into(),
                sock.display().to_string(),
                "--serve-for".into(),
                args.serve_for.to_string(),
            ],
        },
        kexts: built.iter().map(|b| b.path.clone()).collect(),
        timeout: Duration::from_secs(args.serve_for + 60),
        faults: None,
    };
    let names: Vec<String> = built
        .iter()
        .map(|b| {
            b.path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        })
        .collect();
    let runner = std::thread::spawn(move || vm::emu::run(&opts, "ctl-bridge"));
    let started = Instant::now();
    while !sock.exists() && !runner.is_finished() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{}: the bridge did not listen within 60 s", sock.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if sock.exists() {
        let s = sock.display();
        eprintln!(
            "emu-bridge: {} loaded in the KPI emulator; their controls are served on {s}\n\
             try:  prxctl --emu {s} --as-uid 0 status\n      \
             prxctl --emu {s} --as-uid 0 --kext ip rules show\n\
             stop: Ctrl-C (or `quit` on the socket: the kexts are then unloaded and checked)",
            names.join(" and ")
        );
    }
    let report = runner
        .join()
        .map_err(|_| anyhow::anyhow!("the emulator thread panicked"))?;
    print!("{}", report.render());
    // Serving until --serve-for ran out is how a bridge nobody `quit` ends.
    let timed_out = |f: &String| {
        f.starts_with("ctl-bridge: quit: no `quit` within") || f.starts_with("ctl-bridge: served:")
    };
    if report.failures.iter().all(timed_out)
        && !report.failures.is_empty()
        && report.violations.is_empty()
    {
        eprintln!(
            "emu-bridge: stopped after --serve-for {} s (the kexts were unloaded and checked)",
            args.serve_for
        );
        return Ok(());
    }
    if !report.passed {
        bail!("the emulator bridge failed (report above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_kext_name_or_a_busy_socket_fails_before_any_build() {
        let d = tempfile::tempdir().unwrap();
        // The root has no Cargo.toml: a build would fail differently.
        let e = run(
            d.path(),
            Args {
                socket: Some(d.path().join("b.sock")),
                kexts: vec!["bogus".into()],
                serve_for: 5,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--kext bogus: no such kext (socket, ip)"), "{e}");
        let sock = d.path().join("busy.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = run(
            d.path(),
            Args {
                socket: Some(sock.clone()),
                kexts: vec![],
                serve_for: 5,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("a bridge is already serving there"), "{e}");
        assert!(sock.exists(), "a live socket is left alone");
    }
}
