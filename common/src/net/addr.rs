//! IP addresses and transport endpoints, as plain values (no `sockaddr` layout:
//! [`crate::kpi::sflt`] converts between these and the kernel's structures).

/// An IPv4 or IPv6 address, in network byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpAddr {
    /// IPv4.
    V4([u8; 4]),
    /// IPv6.
    V6([u8; 16]),
}

/// The address family of an [`IpAddr`] or a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `AF_INET`.
    V4,
    /// `AF_INET6`.
    V6,
}

impl Family {
    /// Address length in bits.
    pub const fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl IpAddr {
    /// The family.
    pub const fn family(&self) -> Family {
        match self {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The address bytes (4 or 16).
    pub fn octets(&self) -> &[u8] {
        match self {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => a,
        }
    }

    /// The address as 16 bytes: IPv4 in the first four, the rest zero.
    pub fn to_bytes16(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (d, s) in out.iter_mut().zip(self.octets()) {
            *d = *s;
        }
        out
    }

    /// `::ffff:a.b.c.d` for an IPv4 address; IPv6 addresses unchanged.
    pub fn to_v6_mapped(&self) -> [u8; 16] {
        match self {
            IpAddr::V6(a) => *a,
            IpAddr::V4([a, b, c, d]) => [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, *a, *b, *c, *d],
        }
    }

    /// The IPv4 address inside `::ffff:a.b.c.d`, if this is one.
    pub fn v4_mapped(&self) -> Option<[u8; 4]> {
        match self {
            IpAddr::V6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]) => {
                Some([*a, *b, *c, *d])
            }
            _ => None,
        }
    }

    /// The same address in its canonical form: an IPv4-mapped IPv6 address
    /// becomes IPv4 (rules and lookups match on canonical addresses).
    pub fn canonical(&self) -> IpAddr {
        match self.v4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => *self,
        }
    }

    /// Whether the first `prefix` bits equal those of `net` (same family).
    pub fn in_prefix(&self, net: &IpAddr, prefix: u8) -> bool {
        if self.family() != net.family() || prefix > self.family().bits() {
            return false;
        }
        mask(self, prefix) == mask(net, prefix)
    }
}

/// `a` with every bit after the first `prefix` cleared (`prefix` beyond the
/// family's width keeps every bit).
pub fn mask(a: &IpAddr, prefix: u8) -> IpAddr {
    fn apply<const N: usize>(mut b: [u8; N], prefix: u8) -> [u8; N] {
        let mut left = u32::from(prefix);
        for byte in b.iter_mut() {
            if left >= 8 {
                left = left.saturating_sub(8);
            } else {
                // left < 8: keep the top `left` bits.
                let keep = (0xFF00u16 >> left) as u8;
                *byte &= keep;
                left = 0;
            }
        }
        b
    }
    match a {
        IpAddr::V4(b) => IpAddr::V4(apply(*b, prefix)),
        IpAddr::V6(b) => IpAddr::V6(apply(*b, prefix)),
    }
}

/// An address and a TCP/UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// The address.
    pub addr: IpAddr,
    /// The port, host byte order.
    pub port: u16,
}

impl Endpoint {
    /// A new endpoint.
    pub const fn new(addr: IpAddr, port: u16) -> Self {
        Endpoint { addr, port }
    }

    /// The same endpoint with a canonical address (see [`IpAddr::canonical`]).
    pub fn canonical(&self) -> Endpoint {
        Endpoint {
            addr: self.addr.canonical(),
            port: self.port,
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "host tests"
)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_prefixes() {
        let a = IpAddr::V4([203, 0, 113, 10]);
        assert_eq!(mask(&a, 24), IpAddr::V4([203, 0, 113, 0]));
        assert_eq!(mask(&a, 25), IpAddr::V4([203, 0, 113, 0]));
        assert_eq!(mask(&a, 29), IpAddr::V4([203, 0, 113, 8]));
        assert_eq!(mask(&a, 0), IpAddr::V4([0; 4]));
        assert!(a.in_prefix(&IpAddr::V4([203, 0, 113, 0]), 24));
        assert!(!a.in_prefix(&IpAddr::V4([203, 0, 114, 0]), 24));
        let v6 = IpAddr::V6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(v6.in_prefix(
            &IpAddr::V6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            32
        ));
        assert!(!v6.in_prefix(&IpAddr::V4([0; 4]), 0));
        assert_eq!(IpAddr::V6(a.to_v6_mapped()).canonical(), a);
    }
}
