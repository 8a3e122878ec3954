//! prxd against real third-party servers started here on loopback: microsocks
//! (SOCKS5, username/password), tinyproxy (HTTP CONNECT, Basic auth), haproxy
//! (a PROXY v2 sender that is not ours: `send-proxy-v2`).

mod support;

use std::net::SocketAddr;

use support::*;

const DATA: &[u8] = b"hello through prxd\n";

fn pong() -> Vec<u8> {
    [&b"pong:"[..], DATA].concat()
}

fn microsocks(user: &str, pass: &str) -> Server {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    Server::spawn(
        "microsocks",
        &[
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-u".into(),
            user.into(),
            "-P".into(),
            pass.into(),
        ],
        tempfile::tempdir().unwrap(),
        addr,
    )
}

fn tinyproxy(user: &str, pass: &str) -> Server {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("tinyproxy.conf");
    // No ConnectPort line: CONNECT to any port (the origin's is random).
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nUser nobody\nGroup nogroup\n\
             BasicAuth {user} {pass}\nAllow 127.0.0.1\nLogLevel Info\n"
        ),
    )
    .unwrap();
    Server::spawn(
        "tinyproxy",
        &["-d".into(), "-c".into(), conf.display().to_string()],
        dir,
        addr,
    )
}

fn password_file(dir: &tempfile::TempDir, pw: &str) -> String {
    let f = dir.path().join("password");
    std::fs::write(&f, format!("{pw}\n")).unwrap();
    f.display().to_string()
}

#[test]
fn through_microsocks_with_user_and_password() {
    let origin = line_origin();
    let socks = microsocks("alice", "s3cret");
    let url = format!("socks5://alice@{}", socks.addr);
    let p = Prxd::run(
        &["--upstream", &url, "--trust-header", "--controls", "none"],
        &[("PRXD_UPSTREAM_PASSWORD", "s3cret")],
    );
    let got = exchange_open(
        p.listen,
        &header("127.0.0.1:40000".parse().unwrap(), origin),
        DATA,
    );
    assert_eq!(
        got,
        pong(),
        "bytes intact both ways, then a clean close:\n{}",
        p.log_text()
    );
    let line = p.wait_line(&["outcome=\"ok\""]);
    assert!(line.contains(&format!("dst={origin}")), "{line}");
    assert!(line.contains("upstream=upstream"), "{line}");
    assert!(
        line.contains(&format!("up={} down={}", DATA.len(), DATA.len() + 5)),
        "{line}"
    );
    assert!(
        !p.log_text().contains("s3cret"),
        "the password is never logged"
    );

    // Wrong password: a clear, logged failure; the client is closed.
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(&dir, "wrong");
    let bad = Prxd::run(
        &[
            "--upstream",
            &url,
            "--password-file",
            &pw,
            "--trust-header",
            "--controls",
            "none",
        ],
        &[],
    );
    let got = exchange_open(
        bad.listen,
        &header("127.0.0.1:40001".parse().unwrap(), origin),
        DATA,
    );
    assert!(got.is_empty(), "nothing relayed: {got:?}");
    let line = bad.wait_line(&["authentication failed"]);
    assert!(line.contains("rejected user `alice`"), "{line}");
    assert_eq!(bad.counter("upstream_auth_failed"), 1);
    assert!(
        !bad.log_text().contains("wrong"),
        "the password is never logged"
    );
}

#[test]
fn through_tinyproxy_with_basic_auth() {
    let origin = line_origin();
    let http = tinyproxy("alice", "s3cret");
    let url = format!("http://alice@{}", http.addr);
    let dir = tempfile::tempdir().unwrap();
    let pw = password_file(&dir, "s3cret");
    let p = Prxd::run(
        &[
            "--upstream",
            &url,
            "--password-file",
            &pw,
            "--trust-header",
            "--controls",
            "none",
        ],
        &[],
    );
    let got = exchange_open(
        p.listen,
        &header("127.0.0.1:40002".parse().unwrap(), origin),
        DATA,
    );
    assert_eq!(got, pong(), "{}", p.log_text());
    let line = p.wait_line(&["outcome=\"ok\""]);
    assert!(line.contains(&format!("dst={origin}")), "{line}");

    let wrong = password_file(&dir, "nope");
    let bad = Prxd::run(
        &[
            "--upstream",
            &url,
            "--password-file",
            &wrong,
            "--trust-header",
            "--controls",
            "none",
        ],
        &[],
    );
    let got = exchange_open(
        bad.listen,
        &header("127.0.0.1:40003".parse().unwrap(), origin),
        DATA,
    );
    assert!(got.is_empty(), "{got:?}");
    let line = bad.wait_line(&["authentication failed"]);
    assert!(line.contains("answered 401 Unauthorized"), "{line}");
    assert!(line.contains("check the user and the password"), "{line}");
    assert_eq!(bad.counter("upstream_auth_failed"), 1);
}

#[test]
fn headers_sent_by_haproxy_are_accepted() {
    let origin = line_origin();
    let p = Prxd::run(&["--trust-header", "--controls", "none"], &[]);
    let port = free_port();
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    // haproxy as a transparent front: the connection's destination is set to
    // the origin, so its PROXY v2 header names the origin; with a CRC32C TLV
    // and a unique-id TLV, so prxd's TLV walking meets haproxy's encoding.
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend f\n  bind {front}\n  tcp-request connection set-dst ipv4({ip})\n  tcp-request connection set-dst-port int({oport})\n\
               unique-id-format prx-%ci-%cp\n  default_backend b\n\
             backend b\n  server prxd {prxd} send-proxy-v2 proxy-v2-options crc32c,unique-id\n",
            ip = origin.ip(),
            oport = origin.port(),
            prxd = p.listen,
        ),
    )
    .unwrap();
    let _h = Server::spawn(
        "haproxy",
        &["-db".into(), "-f".into(), cfg.display().to_string()],
        dir,
        front,
    );
    // Server::spawn's readiness probe was itself relayed: wait for its line.
    p.wait_line(&["outcome="]);
    let before = p.counter("completed");
    let got = exchange_open(front, b"", DATA);
    assert_eq!(got, pong(), "{}", p.log_text());
    let line = p.wait_line(&[&format!("dst={origin}"), &format!("up={}", DATA.len())]);
    assert!(line.contains("rule=header"), "{line}");
    assert!(line.contains("outcome=\"ok\""), "{line}");
    p.wait_counter("completed", before + 1);
    assert_eq!(p.counter("bad_header"), 0, "{}", p.log_text());
}
