//! Deterministic inputs: a small PRNG, TCP packets with valid checksums, and
//! rule sets of mixed CIDR prefixes.

use anyhow::{Context, Result, ensure};
use common::net::addr::{Endpoint, IpAddr};
use common::net::checksum;
use common::net::rules::{Action, Cidr, Conn, ProcName, ProcSel, Protocol, Rule};
use common::net::wire::{ip, proto};

/// splitmix64: deterministic, so every run measures the same inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

/// A TCP packet: IPv4 (20-byte header) or IPv6 (40-byte header), a TCP header
/// with `options` bytes of options (a multiple of 4: NOPs and a timestamp are
/// written, the rest zero), `payload` bytes of payload, correct checksums.
pub struct Tcp {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub flags: u8,
    pub options: usize,
    pub payload: usize,
}

impl Tcp {
    pub fn build(&self) -> Result<Vec<u8>> {
        ensure!(
            self.options.is_multiple_of(4) && self.options <= 40,
            "bad TCP options length"
        );
        let tcp_len = 20 + self.options + self.payload;
        let mut p = match (self.src.addr, self.dst.addr) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = u16::try_from(20 + tcp_len).context("packet too long")?;
                let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, proto::TCP, 0, 0];
                h[2..4].copy_from_slice(&total.to_be_bytes());
                h.extend_from_slice(&s);
                h.extend_from_slice(&d);
                let c = checksum::checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                h
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let plen = u16::try_from(tcp_len).context("packet too long")?;
                let mut h = vec![0x60, 0, 0, 0, 0, 0, proto::TCP, 64];
                h[4..6].copy_from_slice(&plen.to_be_bytes());
                h.extend_from_slice(&s);
                h.extend_from_slice(&d);
                h
            }
            _ => anyhow::bail!("mixed address families"),
        };
        let l4 = p.len();
        p.extend_from_slice(&self.src.port.to_be_bytes());
        p.extend_from_slice(&self.dst.port.to_be_bytes());
        p.extend_from_slice(&0x1000_0000u32.to_be_bytes()); // seq
        p.extend_from_slice(&0x2000_0000u32.to_be_bytes()); // ack
        let words = u8::try_from((20 + self.options) / 4).context("options")?;
        p.extend_from_slice(&[words << 4, self.flags, 0xff, 0xff, 0, 0, 0, 0]);
        let mut opts = vec![0u8; self.options];
        if self.options >= 12 {
            // NOP NOP TS(10): what every established Apple/Linux TCP segment carries.
            opts[..4].copy_from_slice(&[1, 1, 8, 10]);
            opts[4..12].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        }
        p.extend_from_slice(&opts);
        p.extend((0..self.payload).map(|i| (i as u8).wrapping_mul(31).wrapping_add(7)));
        let c = checksum::transport(&self.src.addr, &self.dst.addr, proto::TCP, &p[l4..]);
        p[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        verify(&p)?;
        Ok(p)
    }
}

/// Checks a whole packet's IPv4 header checksum and its TCP checksum by full
/// recomputation (independent of the incremental updates under test).
pub fn verify(packet: &[u8]) -> Result<()> {
    let t = ip::transport(packet).map_err(|e| anyhow::anyhow!("unparseable packet: {e:?}"))?;
    if let IpAddr::V4(_) = t.src {
        ensure!(
            checksum::checksum(&packet[..20]) == 0,
            "bad IPv4 header checksum"
        );
    }
    ensure!(
        checksum::verify_transport(&t.src, &t.dst, t.protocol, &packet[t.offset..]),
        "bad TCP checksum"
    );
    Ok(())
}

pub const fn v4(a: [u8; 4], port: u16) -> Endpoint {
    Endpoint {
        addr: IpAddr::V4(a),
        port,
    }
}

pub const fn v6(a: [u8; 16], port: u16) -> Endpoint {
    Endpoint {
        addr: IpAddr::V6(a),
        port,
    }
}

/// 2001:db8:<a>:<b>::<c>
pub const fn doc6(a: u16, b: u16, c: u16) -> [u8; 16] {
    let [a0, a1] = a.to_be_bytes();
    let [b0, b1] = b.to_be_bytes();
    let [c0, c1] = c.to_be_bytes();
    [
        0x20, 0x01, 0x0d, 0xb8, a0, a1, b0, b1, 0, 0, 0, 0, 0, 0, c0, c1,
    ]
}

const PORTS: [u16; 8] = [443, 80, 22, 53, 8080, 993, 5222, 3478];
const NAMES: [&[u8]; 4] = [b"curl", b"ssh", b"git", b"Safari"];

/// A random IPv4 address outside 192/8, 203/8 and 127/8 (so generated rules
/// never cover the benchmark's own flows and proxies).
fn random_v4(rng: &mut Rng) -> [u8; 4] {
    let first = loop {
        let b = 1 + rng.below(223) as u8;
        if !matches!(b, 127 | 192 | 203) {
            break b;
        }
    };
    [first, rng.byte(), rng.byte(), rng.byte()]
}

/// A random address in fd00::/8 (never the benchmark's 2001:db8::/32).
fn random_v6(rng: &mut Rng) -> [u8; 16] {
    let mut a = [0u8; 16];
    for b in &mut a {
        *b = rng.byte();
    }
    a[0] = 0xfd;
    a
}

/// `n` rules of mixed kinds, the way a real rules file looks: mostly IPv4
/// destinations with a spread of prefix lengths (/32 35 %, /24 25 %, /16 10 %,
/// /17–/31 20 %, /8 1 %), IPv6 destinations (/128, /64, /56, /48 and others),
/// a few rules without destination that select a process (never matched at the
/// IP layer); protocols, ports and actions mixed.
pub fn rules(n: usize, seed: u64) -> Vec<Rule> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let kind = rng.below(100);
            let dst = if kind < 84 {
                let p = match rng.below(100) {
                    0..35 => 32,
                    35..60 => 24,
                    60..70 => 16,
                    70..71 => 8,
                    _ => 17 + rng.below(15) as u8,
                };
                Cidr::new(IpAddr::V4(random_v4(&mut rng)), p)
            } else if kind < 96 {
                let p = match rng.below(100) {
                    0..30 => 128,
                    30..60 => 64,
                    60..70 => 56,
                    70..90 => 48,
                    _ => 16 + rng.below(112) as u8,
                };
                Cidr::new(IpAddr::V6(random_v6(&mut rng)), p)
            } else {
                None
            };
            let process = if dst.is_none() {
                if rng.percent(50) {
                    ProcSel::Pid(100 + rng.below(100) as u32)
                } else {
                    ProcSel::Name(ProcName::new(NAMES[rng.below(4) as usize]))
                }
            } else {
                ProcSel::Any
            };
            let (port_lo, port_hi) = match rng.below(10) {
                0..6 => (0, u16::MAX),
                6..9 => {
                    let p = PORTS[rng.below(8) as usize];
                    (p, p)
                }
                _ => {
                    let lo = 1024 + rng.below(30000) as u16;
                    (lo, lo + rng.below(10000) as u16)
                }
            };
            let protocol = match rng.below(10) {
                0..6 => Protocol::Any,
                6..9 => Protocol::Tcp,
                _ => Protocol::Udp,
            };
            let action = match rng.below(100) {
                0..50 => Action::Proxy { proxy_v2: false },
                50..55 => Action::Proxy { proxy_v2: true },
                55..90 => Action::Direct,
                _ => Action::Block,
            };
            Rule {
                protocol,
                dst,
                port_lo,
                port_hi,
                process,
                exclude_process: false,
                action,
            }
        })
        .collect()
}

/// `n` connections to look up in `rules`: three in four go to a random host
/// inside a random rule's network, the rest to a random address (mostly
/// misses: the default action, the linear scan's worst case).
pub fn queries(rules: &[Rule], n: usize, seed: u64) -> Vec<Conn<'static>> {
    let mut rng = Rng::new(seed);
    let nets: Vec<Cidr> = rules.iter().filter_map(|r| r.dst).collect();
    (0..n)
        .map(|_| {
            let addr = match nets.get(rng.below(nets.len() as u64) as usize) {
                Some(net) if rng.percent(75) => inside(net, &mut rng),
                _ if rng.percent(85) => IpAddr::V4(random_v4(&mut rng)),
                _ => IpAddr::V6(random_v6(&mut rng)),
            };
            let port = if rng.percent(80) {
                PORTS[rng.below(8) as usize]
            } else {
                1024 + rng.below(60000) as u16
            };
            Conn {
                dst: Endpoint::new(addr, port),
                pid: 4242,
                name: b"firefox",
                protocol: if rng.percent(85) {
                    proto::TCP
                } else {
                    proto::UDP
                },
            }
        })
        .collect()
}

/// A random address inside `net`.
fn inside(net: &Cidr, rng: &mut Rng) -> IpAddr {
    let mut bytes = net.addr.to_bytes16();
    let len = match net.addr {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 16,
    };
    let prefix = usize::from(net.prefix);
    for (i, b) in bytes.iter_mut().enumerate().take(len) {
        let host_bits = (i * 8 + 8).saturating_sub(prefix).min(8);
        let mask = if host_bits == 8 {
            0xff
        } else {
            (1u8 << host_bits) - 1
        };
        *b |= rng.byte() & mask;
    }
    match net.addr {
        IpAddr::V4(_) => IpAddr::V4([bytes[0], bytes[1], bytes[2], bytes[3]]),
        IpAddr::V6(_) => IpAddr::V6(bytes),
    }
}
