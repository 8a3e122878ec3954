//! What the guest's answers mean: the pure half of the guest flow. Each
//! function reads the text a macOS tool printed (`kmutil`/`kextload` errors,
//! `od`, `ls` of the panic-report directories, `sw_vers`, `route`, `ipconfig`,
//! `prxctl status`) or the bytes the listener received, and returns a value or
//! a verdict with the words a report shows. Tested here without a guest.

use common::net::addr::{Endpoint, IpAddr};
use common::net::proxy_v2::{self, Addresses, Command, Transport};

/// What macOS said about a load that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadRefusal {
    /// User approval missing (System Settings › Privacy & Security), or a reboot pending.
    NotApproved,
    /// Signature / SIP refused it.
    Signature,
}

/// Classifies the output of a failed `kmutil load` / `kextload`.
pub fn classify_load_failure(text: &str) -> Option<LoadRefusal> {
    let t = text.to_ascii_lowercase();
    const APPROVAL: &[&str] = &[
        "not approved",
        "needs to be approved",
        "system policy prevents loading",
        "rejected due to system policy",
        "approve",
        "reboot is required",
        "requires a reboot",
    ];
    const SIGNATURE: &[&str] = &[
        "not signed",
        "authentication failures",
        "invalid signature",
        "codesign",
        "system integrity protection",
        "kext-dev-mode",
    ];
    if APPROVAL.iter().any(|p| t.contains(p)) {
        Some(LoadRefusal::NotApproved)
    } else if SIGNATURE.iter().any(|p| t.contains(p)) {
        Some(LoadRefusal::Signature)
    } else {
        None
    }
}

/// What the user must do, once, on the guest.
pub fn refusal_instructions(r: LoadRefusal, major: u32) -> String {
    match r {
        LoadRefusal::NotApproved if major >= 11 => "macOS has not approved the kext. On the guest, once: open System Settings › Privacy & Security (System Preferences › Security & Privacy before macOS 13), click Allow for the prx kexts' developer, and reboot (macOS 11+ rebuilds the auxiliary kernel collection at reboot). On a VM snapshot, take the snapshot after that reboot. Alternatively pre-approve the Team ID from Recovery with `spctl kext-consent add TEAMID` (SIP must allow it). Then run vm-test again.".into(),
        LoadRefusal::NotApproved => "macOS has not approved the kext (User-Approved Kernel Extension Loading, 10.13+). On the guest, once: open System Preferences › Security & Privacy › General, click Allow, then load again (no reboot needed before macOS 11), or pre-approve from Recovery with `spctl kext-consent add TEAMID`. Then run vm-test again.".into(),
        LoadRefusal::Signature => "macOS refused the kext's signature. Either sign with a Developer ID certificate that has the kext entitlement (`cargo xtask package` with signing), or for test builds boot the guest's Recovery and run `csrutil disable` (or `csrutil enable --without kext`), reboot, and approve the kext. Then run vm-test again.".into(),
    }
}

/// A PROXY v2 header as a report describes it. Decoding is
/// [`proxy_v2::parse`]'s, the codec the socket filter writes headers with and
/// prxd reads them with; this only puts its result into words and numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyV2 {
    /// The command as on the wire: 0 LOCAL, 1 PROXY.
    pub command: u8,
    /// The address family and transport byte as on the wire (0x11: TCP over
    /// IPv4, 0x21: TCP over IPv6; the family nibble is 0 when the header
    /// carries no addresses, as after LOCAL).
    pub family: u8,
    pub src: String,
    pub dst: String,
    /// The pid and process-name TLVs, if present.
    pub pid: Option<u32>,
    pub process: Option<String>,
    /// Header length in bytes (16 + address block + TLVs).
    pub len: usize,
}

/// Decodes a PROXY v2 header at the start of `b`, if there is a well-formed one.
pub fn parse_proxy_v2(b: &[u8]) -> Option<ProxyV2> {
    let p = proxy_v2::parse(b).ok()?;
    let show = |e: &Endpoint| match e.addr {
        IpAddr::V4(a) => std::net::SocketAddr::from((a, e.port)).to_string(),
        IpAddr::V6(a) => std::net::SocketAddr::from((a, e.port)).to_string(),
    };
    // The numbers of the specification's table (see `common::net::proxy_v2`'s docs).
    let (src, dst, family) = match p.addrs {
        Addresses::Ip { src, dst } => {
            let family = match src.addr {
                IpAddr::V4(_) => 1,
                IpAddr::V6(_) => 2,
            };
            (show(&src), show(&dst), family)
        }
        Addresses::Unix => ("?".into(), "?".into(), 3),
        Addresses::None => ("?".into(), "?".into(), 0),
    };
    let transport = match p.transport {
        Transport::Unspec => 0,
        Transport::Stream => 1,
        Transport::Dgram => 2,
    };
    Some(ProxyV2 {
        command: match p.command {
            Command::Local => 0,
            Command::Proxy => 1,
        },
        family: (family << 4) | transport,
        src,
        dst,
        pid: p.pid(),
        process: p.process().map(|n| String::from_utf8_lossy(n).into_owned()),
        len: p.len,
    })
}

/// Parses `od -An -tx1 -v` output back into bytes.
pub fn parse_od(text: &str) -> Vec<u8> {
    text.split_ascii_whitespace()
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect()
}

/// Bytes shown for a report: printable ASCII as is, the rest escaped.
pub fn show_bytes(b: &[u8]) -> String {
    b.iter()
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect()
}

/// Panic-report file names in an `ls -1` listing.
pub fn panic_reports(listing: &str) -> Vec<String> {
    let mut v: Vec<String> = listing
        .lines()
        .map(str::trim)
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.ends_with(".panic") || l.starts_with("kernel_") || l.starts_with("panic-")
        })
        .map(String::from)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The macOS major version from `sw_vers -productVersion` (10 for 10.x).
pub fn major_version(v: &str) -> Option<u32> {
    v.trim().split('.').next()?.parse().ok()
}

/// The outgoing interface in `route -n get HOST`'s answer (its `interface: en0` line).
pub fn parse_route_interface(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix("interface:")?.trim();
        (!v.is_empty() && !v.contains(char::is_whitespace)).then(|| v.to_string())
    })
}

/// The address `ipconfig getifaddr IF` printed: one IPv4 address that another
/// host could send to (not loopback, unspecified, multicast or broadcast).
pub fn parse_ifaddr(text: &str) -> Option<std::net::Ipv4Addr> {
    let a: std::net::Ipv4Addr = text.trim().parse().ok()?;
    (!a.is_loopback() && !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast()).then_some(a)
}

/// The `statistics:` list of `prxctl status` as (name, value): the value is a
/// line's last whitespace-separated field, the name the fields before it.
pub fn parse_status_counters(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .skip_while(|l| l.trim() != "statistics:")
        .skip(1)
        .take_while(|l| l.starts_with(char::is_whitespace) && !l.trim().is_empty())
        .filter_map(|l| {
            let mut f: Vec<&str> = l.split_whitespace().collect();
            let v = f.pop()?.parse().ok()?;
            (!f.is_empty()).then(|| (f.join(" "), v))
        })
        .collect()
}

/// `ip-nat`'s verdict on `prxctl --kext ip status` after the client ran:
/// `packets redirected` > 0 and `NAT flows` >= 1. `Err` names what is missing.
pub fn judge_ip_counters(status: &str) -> Result<String, String> {
    let c = parse_status_counters(status);
    let get = |n: &str| c.iter().find(|(k, _)| k == n).map(|&(_, v)| v);
    match (get("packets redirected"), get("NAT flows")) {
        (Some(p), Some(f)) if p > 0 && f >= 1 => {
            Ok(format!("packets redirected {p}, NAT flows {f}"))
        }
        (Some(p), Some(f)) => Err(format!(
            "packets redirected {p}, NAT flows {f} (expected packets redirected > 0 and NAT flows >= 1: the IP filter did not translate the flow)"
        )),
        (p, f) => Err(format!(
            "no {} counter in the statistics",
            match (p, f) {
                (None, None) => "`packets redirected` or `NAT flows`",
                (None, _) => "`packets redirected`",
                _ => "`NAT flows`",
            }
        )),
    }
}

/// `ip-nat`'s verdict on the listener's bytes: the client's plain request
/// (the IP filter rewrites packets, it adds nothing); a PROXY v2 header means
/// the socket filter redirected the connection, not the IP filter.
pub fn judge_ip_listener(bytes: &[u8], redirect_from: &str, proxy: &str) -> Result<String, String> {
    let shown = || {
        format!(
            "{} byte(s): {}",
            bytes.len(),
            show_bytes(&bytes[..bytes.len().min(400)])
        )
    };
    if bytes.is_empty() {
        return Err(format!(
            "nothing: the connection to {redirect_from} was not redirected to the listener at {proxy}"
        ));
    }
    if bytes.starts_with(&proxy_v2::SIGNATURE) {
        let dst = parse_proxy_v2(bytes).map_or(String::new(), |h| format!(" (dst {})", h.dst));
        return Err(format!(
            "a PROXY v2 header{dst}: the socket filter redirected the connection, not the IP filter; {}",
            shown()
        ));
    }
    if String::from_utf8_lossy(bytes).contains("GET /prx-vmtest HTTP/1.1") {
        Ok(shown())
    } else {
        Err(format!("not the client's request: {}", shown()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::guest::pkg_version;

    #[test]
    fn load_refusals_are_classified() {
        assert_eq!(
            classify_load_failure(
                "Error Domain=KMErrorDomain Code=27 \"Extension with identifier net.prx.kext.SocketFilter is not approved to load\""
            ),
            Some(LoadRefusal::NotApproved)
        );
        assert_eq!(
            classify_load_failure(
                "/Library/Extensions/X.kext failed to load - (libkern/kext) system policy prevents loading; check the system/kernel logs"
            ),
            Some(LoadRefusal::NotApproved)
        );
        assert_eq!(
            classify_load_failure("Authentication Failures: File owner/permissions are incorrect"),
            Some(LoadRefusal::Signature)
        );
        assert_eq!(classify_load_failure("(libkern/kext) link error"), None);
        assert!(refusal_instructions(LoadRefusal::NotApproved, 13).contains("reboot"));
    }

    #[test]
    fn proxy_v2_headers_are_decoded() {
        let mut b = proxy_v2::SIGNATURE.to_vec();
        b.extend([
            0x21, 0x11, 0, 12, 10, 0, 0, 2, 203, 0, 113, 10, 0xC3, 0x50, 0, 80,
        ]);
        b.extend(b"GET / HTTP/1.1\r\n");
        let h = parse_proxy_v2(&b).unwrap();
        assert_eq!((h.command, h.family, h.len), (1, 0x11, 28));
        assert_eq!(h.src, "10.0.0.2:50000");
        assert_eq!(h.dst, "203.0.113.10:80");
        assert!(parse_proxy_v2(b"GET / HTTP/1.1").is_none());
        assert_eq!(parse_od(" 0d 0a 00\n 51\n"), vec![13, 10, 0, 0x51]);
        assert_eq!(show_bytes(b"a\r\n\0"), "a\\r\\n\\x00");
    }

    #[test]
    fn proxy_v2_headers_the_codec_writes_are_described() {
        let src = Endpoint::new(
            IpAddr::V6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            50000,
        );
        let dst = Endpoint::new(
            IpAddr::V6([
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
            ]),
            80,
        );
        let h = proxy_v2::encode(&src, &dst, 4242, b"curl");
        let d = parse_proxy_v2(h.as_bytes()).unwrap();
        assert_eq!((d.command, d.family, d.len), (1, 0x21, h.as_bytes().len()));
        assert_eq!(
            (d.src.as_str(), d.dst.as_str()),
            ("[fd00::1]:50000", "[2001:db8::10]:80")
        );
        assert_eq!((d.pid, d.process.as_deref()), (Some(4242), Some("curl")));
        // LOCAL carries no addresses: family nibble 0, nothing to show.
        let mut local = proxy_v2::SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        let d = parse_proxy_v2(&local).unwrap();
        assert_eq!(
            (d.command, d.family, d.len, d.src.as_str()),
            (0, 0, 16, "?")
        );
        // Truncated: no header.
        assert!(parse_proxy_v2(&h.as_bytes()[..20]).is_none());
    }

    #[test]
    fn panic_report_names_and_versions() {
        let l = "Kernel_2019-01-01-120000_mac.panic\npanic-full-2024-05-01-101010.0002.panic\nkextd_2020.crash\nRetired\n";
        assert_eq!(
            panic_reports(l),
            vec![
                "Kernel_2019-01-01-120000_mac.panic",
                "panic-full-2024-05-01-101010.0002.panic"
            ]
        );
        assert_eq!(major_version("10.15.7\n"), Some(10));
        assert_eq!(
            pkg_version(std::path::Path::new("/x/prx-0.1.0.pkg")).as_deref(),
            Some("0.1.0")
        );
        assert_eq!(pkg_version(std::path::Path::new("/x/other.pkg")), None);
        assert_eq!(major_version("14.5"), Some(14));
        assert_eq!(major_version("Linux"), None);
    }
    #[test]
    fn guest_address_from_route_and_ipconfig() {
        let route = "   route to: 203.0.113.10\ndestination: default\n       mask: default\n    gateway: 10.0.2.2\n  interface: en0\n      flags: <UP,GATEWAY,DONE,STATIC,PRCLONING>\n recvpipe  sendpipe  ssthresh  rtt,msec    rttvar  hopcount      mtu     expire\n       0         0         0         0         0         0      1500         0\n";
        assert_eq!(parse_route_interface(route).as_deref(), Some("en0"));
        assert_eq!(
            parse_route_interface("route: writing to routing socket: not in table\n"),
            None
        );
        assert_eq!(parse_route_interface("  interface: \n"), None);
        assert_eq!(parse_ifaddr("10.0.2.15\n"), Some([10, 0, 2, 15].into()));
        assert_eq!(parse_ifaddr("127.0.0.1\n"), None);
        assert_eq!(parse_ifaddr("0.0.0.0"), None);
        assert_eq!(parse_ifaddr(""), None);
        assert_eq!(parse_ifaddr("fe80::1"), None);
        assert_eq!(parse_ifaddr("10.0.2.15\n192.168.1.2\n"), None);
    }

    const IP_STATUS: &str = "filtering:        enabled\nrules:            1 (rule sets installed: 1)\nfilters attached: 2 (IPv4, IPv6)\ncontrol clients:  1\nproxy (IPv4):     10.0.2.15:18080\nproxy (IPv6):     none\nstatistics:\n  NAT flows                           1\n  NAT flow capacity                4096\n  packets redirected                 12\n  reply packets rewritten            10\n  packets dropped: busy               0\n";

    #[test]
    fn ip_status_counters_are_parsed_and_judged() {
        let c = parse_status_counters(IP_STATUS);
        assert_eq!(c.len(), 5);
        assert_eq!(c[0], ("NAT flows".to_string(), 1));
        assert_eq!(c[1], ("NAT flow capacity".to_string(), 4096));
        assert_eq!(c[4], ("packets dropped: busy".to_string(), 0));
        assert_eq!(
            judge_ip_counters(IP_STATUS),
            Ok("packets redirected 12, NAT flows 1".into())
        );
        let zero = IP_STATUS.replace(
            "redirected                 12",
            "redirected                  0",
        );
        assert!(
            judge_ip_counters(&zero)
                .unwrap_err()
                .starts_with("packets redirected 0, NAT flows 1")
        );
        let no_flows = IP_STATUS.replace("NAT flows                           1", "NAT flows 0");
        assert!(judge_ip_counters(&no_flows).is_err());
        // Lines before `statistics:` ("rules: 1 ...") are not counters.
        assert_eq!(
            judge_ip_counters("rules:            1\nNAT flows 3\n").unwrap_err(),
            "no `packets redirected` or `NAT flows` counter in the statistics"
        );
    }

    #[test]
    fn ip_listener_bytes_are_judged() {
        let req = b"GET /prx-vmtest HTTP/1.1\r\nHost: 203.0.113.10\r\n\r\n";
        assert!(judge_ip_listener(req, "203.0.113.10:80", "10.0.2.15:18080").is_ok());
        assert_eq!(
            judge_ip_listener(b"", "203.0.113.10:80", "10.0.2.15:18080").unwrap_err(),
            "nothing: the connection to 203.0.113.10:80 was not redirected to the listener at 10.0.2.15:18080"
        );
        let mut v2 = proxy_v2::SIGNATURE.to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 10, 0, 0, 2, 203, 0, 113, 10, 0xC3, 0x50, 0, 80,
        ]);
        v2.extend(req);
        let e = judge_ip_listener(&v2, "203.0.113.10:80", "10.0.2.15:18080").unwrap_err();
        assert!(
            e.starts_with("a PROXY v2 header (dst 203.0.113.10:80): the socket filter"),
            "{e}"
        );
        assert!(judge_ip_listener(b"SSH-2.0-x\r\n", "203.0.113.10:80", "p").is_err());
    }
}
