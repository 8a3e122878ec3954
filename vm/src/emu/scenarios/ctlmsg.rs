//! Control messages (the wire format of `common::net::control`), written here
//! independently so the emulator checks the kexts against its own reading of the
//! format rather than against the kernel crate's codec.

use std::net::SocketAddr;

/// The control name the socket filter registers.
pub const CONTROL_NAME: &str = "net.prx.kext.SocketFilter.control";

pub fn header(op: u8, len: usize) -> Vec<u8> {
    let mut v = vec![1, op, 0, 0];
    v.extend_from_slice(&(len as u32).to_be_bytes());
    v
}

pub fn endpoint(a: Option<SocketAddr>) -> Vec<u8> {
    let mut v = vec![0u8; 20];
    match a {
        Some(SocketAddr::V4(x)) => {
            v[0] = 4;
            v[2..4].copy_from_slice(&x.port().to_be_bytes());
            v[4..8].copy_from_slice(&x.ip().octets());
        }
        Some(SocketAddr::V6(x)) => {
            v[0] = 6;
            v[2..4].copy_from_slice(&x.port().to_be_bytes());
            v[4..20].copy_from_slice(&x.ip().octets());
        }
        None => {}
    }
    v
}

/// One 48-byte rule record (`common::net::control::parse_rule`); byte 10, the
/// protocol, stays 0: any protocol (callers may set it).
pub fn rule(
    dst: Option<(std::net::IpAddr, u8)>,
    ports: (u16, u16),
    name: Option<&str>,
    action: u8,
    v2: bool,
) -> Vec<u8> {
    let mut r = vec![0u8; 48];
    r[0] = u8::from(dst.is_some());
    r[1] = action;
    r[2] = u8::from(v2);
    r[3] = if name.is_some() { 2 } else { 0 };
    r[4..6].copy_from_slice(&ports.0.to_be_bytes());
    r[6..8].copy_from_slice(&ports.1.to_be_bytes());
    if let Some((a, p)) = dst {
        r[9] = p;
        match a {
            std::net::IpAddr::V4(x) => {
                r[8] = 4;
                r[12..16].copy_from_slice(&x.octets());
            }
            std::net::IpAddr::V6(x) => {
                r[8] = 6;
                r[12..28].copy_from_slice(&x.octets());
            }
        }
    }
    if let Some(n) = name {
        r[32..32 + n.len()].copy_from_slice(n.as_bytes());
    }
    r
}

pub fn rules_msg(rules: &[Vec<u8>]) -> Vec<u8> {
    let len = 16 + 48 * rules.len();
    let mut v = header(1, len);
    v.extend_from_slice(&[0, 0, 0, 0]);
    v.extend_from_slice(&(rules.len() as u32).to_be_bytes());
    for r in rules {
        v.extend_from_slice(r);
    }
    v
}
