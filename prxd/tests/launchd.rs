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
    assert_eq!(d.get("KeepAlive").and_then(|v| v.as_boolean()), Some(true));
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
