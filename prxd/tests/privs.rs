//! Dropping root once the controls and listeners are open, as far as Linux
//! shows it: started as root with `user = "nobody"`, prxd ends up with every
//! uid and gid of nobody (read from /proc) and still serves.

mod support;

use std::net::SocketAddr;

use support::*;

fn ids(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<u32> {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    (field("Uid:"), field("Gid:"))
}

#[test]
fn prxd_drops_root_to_the_configured_user() {
    let nobody = prxd::privs::lookup_user("nobody").expect("the nobody user");
    let e = prxd::privs::lookup_user("prx-no-such-user").unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
    if !prxd::privs::is_root() {
        // Not root: the drop must fail loudly, never half-way.
        let e = prxd::privs::drop_to(nobody).unwrap_err();
        assert!(e.contains("setgroups"), "{e}");
        return;
    }
    let origin = origin();
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let status = dir.path().join("status.sock");
    let cfg = dir.path().join("prx.toml");
    std::fs::write(
        &cfg,
        format!(
            "[prxd]\nlisten = [\"{listen}\"]\ntrust_header = true\ncontrols = []\nuser = \"nobody\"\nstatus_socket = {:?}\n",
            status.display().to_string()
        ),
    )
    .unwrap();
    let mut p = Prxd::start(&["--config".into(), cfg.display().to_string()], &[], listen);
    p.status = status;
    let start = std::time::Instant::now();
    while !p.log_text().contains("dropped privileges to nobody") {
        assert!(start.elapsed().as_secs() < 10, "{}", p.log_text());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (uids, gids) = ids(p.child.id());
    assert!(
        uids.iter().all(|u| *u == nobody.uid),
        "real, effective, saved, fs uid: {uids:?}"
    );
    assert!(gids.iter().all(|g| *g == nobody.gid), "gids: {gids:?}");
    let got = exchange(
        p.listen,
        &header("127.0.0.1:1".parse().unwrap(), origin),
        b"x\n",
    );
    assert_eq!(got, b"pong:x\n");
    assert_eq!(p.counter("completed"), 1);
}
