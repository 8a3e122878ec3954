//! The LaunchDaemon plist the pkg installs: well-formed (read by the `plist`
//! crate), kept alive, run as root, pointing at the installed prxd and the
//! system-wide configuration file, and allowed to drain before launchd kills it.

#[test]
fn the_launch_daemon_is_kept_alive_as_root() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("launchd/net.prx.prxd.plist");
    let v: plist::Value = plist::from_file(&path).expect("a well-formed plist");
    let d = v.as_dictionary().expect("a dictionary");
    assert_eq!(
        d.get("Label").and_then(|v| v.as_string()),
        Some("net.prx.prxd")
    );
    // Kept alive unless it exits 0 (a prx.toml without [prxd]).
    let keep = d
        .get("KeepAlive")
        .and_then(|v| v.as_dictionary())
        .expect("KeepAlive is a dictionary");
    assert_eq!(
        keep.get("SuccessfulExit").and_then(|v| v.as_boolean()),
        Some(false)
    );
    assert_eq!(d.get("RunAtLoad").and_then(|v| v.as_boolean()), Some(true));
    assert!(
        d.get("UserName").is_none(),
        "root: the kexts' controls are privileged"
    );
    let args: Vec<&str> = d
        .get("ProgramArguments")
        .and_then(|v| v.as_array())
        .expect("ProgramArguments")
        .iter()
        .filter_map(|v| v.as_string())
        .collect();
    assert_eq!(
        args,
        [
            "/usr/local/libexec/prxd",
            "--config",
            "/Library/Application Support/prx/prx.toml"
        ]
    );
    // launchd's SIGTERM, then SIGKILL after ExitTimeOut: longer than the
    // default drain_timeout_s (30), so a drain is not cut short.
    let exit = d
        .get("ExitTimeOut")
        .and_then(|v| v.as_signed_integer())
        .unwrap();
    assert!(exit > prxd::config::Config::default().drain_timeout.as_secs() as i64);
}

/// A prx.toml without a [prxd] table: prxd exits 0 at once saying so (its
/// LaunchDaemon then leaves it stopped); a bad [prxd] table is an error
/// (exit 2, restarted by launchd after the throttle interval).
#[test]
fn without_a_prxd_table_prxd_exits_0_and_launchd_leaves_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("prx.toml");
    std::fs::write(&f, "[socket-filter]\nenabled = false\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prxd"))
        .arg("--config")
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("has no [prxd] table: nothing to do"), "{err}");
    assert!(
        err.contains("launchctl kickstart system/net.prx.prxd"),
        "{err}"
    );

    std::fs::write(&f, "[prxd]\nlisten = [\"127.0.0.1\"]\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prxd"))
        .arg("--config")
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("prx.toml:2:"), "{err}");
}

/// launchd starts daemons with a soft descriptor limit of 256; prxd needs two
/// per connection, so it raises its soft limit to the hard one at start.
#[test]
fn prxd_raises_its_soft_descriptor_limit() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 256 && exec '{}' run --listen 127.0.0.1:{port} --trust-header --controls none 2>'{}'",
            env!("CARGO_BIN_EXE_prxd"),
            log.display()
        ))
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.contains("listening on") || start.elapsed() > std::time::Duration::from_secs(10) {
            break t;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("descriptor limit raised from 256 to "),
        "{text}"
    );
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<&str> = line.split_whitespace().collect();
    // "Max open files SOFT HARD files": soft now equals hard.
    assert_eq!(v[3], v[4], "{line}");
}
