//! PrxSocketFilter.kext's acceptance scenarios in the KPI emulator: the shipped
//! release binary (built as `cargo xtask build --release` builds it) redirects
//! real loopback connections (IPv4 and IPv6) to proxy listeners; the PROXY v2
//! headers the proxies received are checked byte for byte by a parser written
//! here, independently of `common::net::proxy_v2`; fault plans on every
//! allocation and injection point leave the ledgers clean.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use vm::emu::ScenarioReport;

fn run(faults: Option<&str>) -> ScenarioReport {
    let kext = support::prx("PrxSocketFilter");
    support::run("sockfilter", &[kext], faults, &[], Duration::from_secs(60))
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// What a PROXY v2 header says (HAProxy's spec, section 2.2), parsed from scratch.
#[derive(Debug, PartialEq)]
struct ProxyHeader {
    src: SocketAddr,
    dst: SocketAddr,
    header_len: usize,
    /// The TLVs after the addresses: (type, value).
    tlvs: Vec<(u8, Vec<u8>)>,
}

impl ProxyHeader {
    fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }
}

fn parse_proxy_v2(b: &[u8]) -> Result<ProxyHeader, String> {
    const SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    if b.len() < 16 || &b[..12] != SIG {
        return Err("no PROXY v2 signature".into());
    }
    if b[12] != 0x21 {
        return Err(format!(
            "version/command {:#x}, want 0x21 (v2, PROXY)",
            b[12]
        ));
    }
    let len = u16::from_be_bytes([b[14], b[15]]) as usize;
    let body = b.get(16..16 + len).ok_or("truncated address block")?;
    let (src, dst) = match b[13] {
        0x11 => {
            if len < 12 {
                return Err(format!("TCP4 length {len}"));
            }
            let ip = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&body[o..o + 4]).unwrap());
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            (
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            )
        }
        0x21 => {
            if len < 36 {
                return Err(format!("TCP6 length {len}"));
            }
            let ip = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&body[o..o + 16]).unwrap());
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            (
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            )
        }
        f => return Err(format!("family/protocol {f:#x}")),
    };
    let mut tlvs = Vec::new();
    let mut rest = &body[if b[13] == 0x11 { 12 } else { 36 }..];
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Err("truncated TLV header".into());
        }
        let n = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        let v = rest.get(3..3 + n).ok_or("truncated TLV value")?;
        tlvs.push((rest[0], v.to_vec()));
        rest = &rest[3 + n..];
    }
    Ok(ProxyHeader {
        src,
        dst,
        header_len: 16 + len,
        tlvs,
    })
}

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\nHost: example\r\n\r\n";

fn check_at_proxy(r: &ScenarioReport, label: &str, want_dst: &str) {
    let d = support::step(r, &format!("{label}: at proxy"));
    // "client ADDR bytes HEX"
    let mut it = d.split(' ');
    assert_eq!(it.next(), Some("client"));
    let client: SocketAddr = it.next().unwrap().parse().unwrap();
    assert_eq!(it.next(), Some("bytes"));
    let bytes = unhex(it.next().unwrap());
    let h = parse_proxy_v2(&bytes).unwrap_or_else(|e| panic!("{label}: {e}: {d}"));
    assert_eq!(
        h.src, client,
        "{label}: the header names the client's address"
    );
    assert_eq!(
        h.dst,
        want_dst.parse::<SocketAddr>().unwrap(),
        "{label}: the original destination"
    );
    // The custom TLVs (0xE0 pid, 0xE1 process name): the emulated client.
    assert_eq!(
        h.tlv(0xE0),
        Some(&4242u32.to_be_bytes()[..]),
        "{label}: pid TLV"
    );
    assert_eq!(
        h.tlv(0xE1),
        Some(&b"prx-emu-client"[..]),
        "{label}: process TLV"
    );
    assert_eq!(
        &bytes[h.header_len..],
        REQUEST,
        "{label}: then the client's bytes, unchanged"
    );
    // The last TLV (0xE2) is the tag: SipHash-2-4 of every byte before it
    // under each half of the key the control hands out (op 20), computed
    // here with std's SipHasher, not the kext's code.
    let (kind, tag) = h.tlvs.last().expect("TLVs");
    assert_eq!((*kind, tag.len()), (0xE2, 16), "{label}: auth TLV last");
    let key = unhex(
        support::step(r, "control: auth key")
            .strip_prefix("errno 0, ")
            .expect("the key"),
    );
    let covered = &bytes[..h.header_len - 16];
    let mut want = Vec::new();
    for half in key[8..40].chunks(16) {
        #[allow(deprecated, reason = "std's SipHasher is SipHash-2-4")]
        let mut s = std::hash::SipHasher::new_with_keys(
            u64::from_le_bytes(half[..8].try_into().unwrap()),
            u64::from_le_bytes(half[8..].try_into().unwrap()),
        );
        std::hash::Hasher::write(&mut s, covered);
        want.extend(std::hash::Hasher::finish(&s).to_le_bytes());
    }
    assert_eq!(tag, &want, "{label}: the tag verifies under the kext's key");
}

#[test]
fn redirects_ipv4_and_ipv6_to_the_proxy_with_proxy_v2_and_leaves_others_direct() {
    let r = run(None);
    assert!(r.passed, "{}", r.render());
    assert!(r.violations.is_empty());
    check_at_proxy(&r, "A", "203.0.113.10:80");
    check_at_proxy(&r, "B", "[2001:db8::10]:80");
    // Lookup response (control protocol): header, found=1, endpoint(fam 4, port 80, 203.0.113.10), pid 4242, rule 1.
    let l = support::step(&r, "A: lookup");
    let resp = unhex(l.rsplit(' ').next().unwrap());
    assert_eq!(&resp[..8], &[1, 17, 0, 0, 0, 0, 0, 40]);
    assert_eq!(&resp[8..12], &[0, 0, 0, 1]);
    assert_eq!(&resp[12..20], &[4, 0, 0, 80, 203, 0, 113, 10]);
    assert_eq!(&resp[32..40], &[0, 0, 0x10, 0x92, 0, 0, 0, 1]);
    for label in [
        "C (no rule)",
        "D (excluded process)",
        "E (proxy's own process)",
    ] {
        assert!(
            r.steps
                .iter()
                .any(|s| s.what == format!("{label}: direct") && s.ok),
            "{label}"
        );
    }
    // In flight: G keeps generation 1's decision (no header); H gets generation 2's.
    assert!(support::step(&r, "G: old rules").ends_with("proxy got 470a"));
    let h = support::step(&r, "H: new rules");
    let bytes = unhex(h.rsplit(' ').next().unwrap());
    let ph = parse_proxy_v2(&bytes).unwrap();
    assert_eq!(ph.dst.ip(), IpAddr::from([127, 0, 0, 2]));
    assert_eq!(&bytes[ph.header_len..], b"H\n");
    assert!(
        r.steps
            .iter()
            .any(|s| s.what == "stop while a control client is connected" && s.ok)
    );
    // A `block` rule refuses the connection at connect.
    assert!(
        support::step(&r, "K: blocked")
            .ends_with("Refused(61) (want refused with ECONNREFUSED, 61)"),
        "{}",
        support::step(&r, "K: blocked")
    );
}

#[test]
fn a_socket_left_unfiltered_by_a_fault_is_counted_by_the_kext() {
    // The cookie allocation of connection A (the 8th OSMalloc) or B (the 9th)
    // fails: that socket goes unfiltered — the documented fail-open — and the
    // kext counts it (step `fail-open counted`); nothing else is excused.
    for (plan, label) in [("alloc#8", "A"), ("alloc#9", "B")] {
        let r = run(Some(plan));
        assert!(r.passed, "{plan}: {}", r.render());
        assert!(
            support::step(&r, &format!("{label}: redirect"))
                .contains("Unfiltered under the fault plan"),
            "{plan}: {}",
            r.render()
        );
        assert_eq!(
            support::step(&r, "fail-open counted"),
            "1 connection(s) of the scenario left unfiltered; the kext counts Some(1) (sockets left unfiltered)",
            "{plan}"
        );
    }
}

#[test]
fn fault_injection_on_every_allocation_and_injection_point_leaves_clean_ledgers() {
    let mut plans: Vec<String> = vec![
        "inject#1".into(),
        "inject#2".into(),
        "inject#3".into(),
        "mbuf-alloc#1".into(),
        "mbuf-alloc#2".into(),
    ];
    // Every OSMalloc in turn (start's allocations, cookies), then seeded mixes.
    plans.extend((1..=12).map(|n| format!("alloc#{n}")));
    plans.extend((1..=4).map(|s| format!("alloc%250@{s};inject%400@{s};mbuf-alloc%300@{s}")));
    for p in &plans {
        let r = run(Some(p));
        assert!(r.violations.is_empty(), "{p}: {:?}", r.violations);
        assert!(r.fault.is_none(), "{p}: {:?}", r.fault);
        // Either the scenario ran through, or start failed cleanly (nothing left registered).
        let clean_start_failure = r
            .steps
            .iter()
            .any(|s| s.what.starts_with("start ") && !s.ok)
            && r.log.iter().any(|l| l.contains("start failed"));
        assert!(r.passed || clean_start_failure, "{p}: {}", r.render());
    }
    // A failed PROXY v2 injection refuses the connection's data (EPIPE) instead
    // of sending it bare; the scenario, strict under every plan, accepts only that.
    let r = run(Some("inject#1"));
    assert!(r.passed, "{}", r.render());
    assert!(
        support::step(&r, "A: at proxy")
            .ends_with("bytes  (data refused with errno Some(32): fail-closed)"),
        "{}",
        support::step(&r, "A: at proxy")
    );
    assert!(r.log.iter().any(|l| l.contains("PROXY v2 header not sent")));
}
