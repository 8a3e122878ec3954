//! The cases: set-up, the measured operation, and the self-checks.
//!
//! Addresses are the documentation networks: clients 10.0.0.0/8 and
//! 2001:db8:1::/48, original destinations 203.0.113.0/24 and 2001:db8:203::/48,
//! proxies 192.0.2.1:3128 and [2001:db8:2::1]:3128.

use anyhow::{Context, Result, anyhow, bail, ensure};
use common::net::addr::{Endpoint, Family, IpAddr};
use common::net::checksum;
use common::net::control::{self, Op, SetRequest};
use common::net::fastpath::{self, OnPlain, Plain, ProxyAddrs, Tracked};
use common::net::filter::{self, Decision, RulesPolicy};
use common::net::nat::{Config, Entry, FlowKey, NatTable};
use common::net::policy::{self, Proxies};
use common::net::rules::{self, Action, Cidr, IndexEntry, Outcome, Protocol, Rule, RuleSet};
use common::net::translate::{self, L4Sum, Side};
use common::net::wire::ip;
use common::net::wire::{proto, tcp};

use crate::input::{self, Tcp, doc6, v4, v6};
use crate::{Case, floor, measured};

/// Every case, in report order.
pub static ALL: &[Case] = &[
    Case {
        name: "floor",
        iterations: (1_000, 11_000),
        baseline: None,
        what: "the floor (bench/src/floor.rs): copy the 52-byte prefix, parse IPv4+TCP, one hash probe at 50 % load, two RFC 1624 updates",
        run: floor_case,
    },
    Case {
        name: "output-v4",
        iterations: (1_000, 11_000),
        baseline: Some("floor"),
        what: "filter::output: IPv4 TCP data packet (52-byte prefix of 1,500) of a tracked flow, table 50 % full",
        run: output_v4,
    },
    Case {
        name: "output-v6",
        iterations: (1_000, 11_000),
        baseline: Some("floor"),
        what: "filter::output: IPv6 TCP data packet (60-byte prefix of 1,500) of a tracked flow, table 50 % full",
        run: output_v6,
    },
    Case {
        name: "input-v4",
        iterations: (1_000, 11_000),
        baseline: Some("floor"),
        what: "filter::input: IPv4 TCP reply from the proxy (52-byte prefix) rewritten back",
        run: input_v4,
    },
    Case {
        name: "input-v6",
        iterations: (1_000, 11_000),
        baseline: Some("floor"),
        what: "filter::input: IPv6 TCP reply from the proxy (60-byte prefix) rewritten back",
        run: input_v6,
    },
    Case {
        name: "fast-output-v4",
        iterations: (1_000, 11_000),
        baseline: Some("floor"),
        what: "net::fastpath (what the kext runs for a plain packet in its first mbuf): the output-v4 packet parsed, looked up, rewritten",
        run: |n| fast_case(CLIENT4, ORIG4, PROXY4, 12, true, n),
    },
    Case {
        name: "fast-output-v6",
        iterations: (1_000, 11_000),
        baseline: Some("floor"),
        what: "net::fastpath: the output-v6 packet",
        run: |n| fast_case(CLIENT6, ORIG6, PROXY6, 0, true, n),
    },
    Case {
        name: "fast-input-v4",
        iterations: (1_000, 11_000),
        baseline: Some("floor"),
        what: "net::fastpath: the input-v4 reply",
        run: |n| fast_case(CLIENT4, ORIG4, PROXY4, 12, false, n),
    },
    Case {
        name: "fast-input-v6",
        iterations: (1_000, 11_000),
        baseline: Some("floor"),
        what: "net::fastpath: the input-v6 reply",
        run: |n| fast_case(CLIENT6, ORIG6, PROXY6, 0, false, n),
    },
    Case {
        name: "syn-v4",
        iterations: (100, 1_100),
        baseline: None,
        what: "filter::output: first SYN of a new flow (60-byte SYN): 1,002-rule lookup + NAT insert, table 50 % full",
        run: syn_v4,
    },
    Case {
        name: "rules-indexed-1",
        iterations: (1_000, 11_000),
        baseline: None,
        what: "RuleSet::lookup, 1 rule (the reference for the larger sets' ratio)",
        run: |n| rules_case(1, false, n),
    },
    Case {
        name: "rules-indexed-10",
        iterations: (1_000, 11_000),
        baseline: Some("rules-indexed-1"),
        what: "RuleSet::lookup, 10 rules of mixed prefixes",
        run: |n| rules_case(10, false, n),
    },
    Case {
        name: "rules-linear-10",
        iterations: (1_000, 11_000),
        baseline: Some("rules-indexed-10"),
        what: "rules::lookup_linear (reference scan), the same 10 rules",
        run: |n| rules_case(10, true, n),
    },
    Case {
        name: "rules-indexed-100",
        iterations: (1_000, 11_000),
        baseline: Some("rules-indexed-1"),
        what: "RuleSet::lookup, 100 rules of mixed prefixes",
        run: |n| rules_case(100, false, n),
    },
    Case {
        name: "rules-indexed-1000",
        iterations: (1_000, 11_000),
        baseline: Some("rules-indexed-1"),
        what: "RuleSet::lookup, 1,000 rules of mixed prefixes",
        run: |n| rules_case(1_000, false, n),
    },
    Case {
        name: "rules-linear-1000",
        iterations: (100, 1_100),
        baseline: Some("rules-indexed-1000"),
        what: "rules::lookup_linear (reference scan), the same 1,000 rules",
        run: |n| rules_case(1_000, true, n),
    },
    Case {
        name: "rules-indexed-10000",
        iterations: (1_000, 11_000),
        baseline: Some("rules-indexed-1"),
        what: "RuleSet::lookup, 10,000 rules of mixed prefixes (ratio: to 1 rule)",
        run: |n| rules_case(10_000, false, n),
    },
    Case {
        name: "rules-indexed-16000",
        iterations: (1_000, 11_000),
        baseline: Some("rules-indexed-1"),
        what: "RuleSet::lookup, 16,000 rules of mixed prefixes",
        run: |n| rules_case(16_000, false, n),
    },
    Case {
        name: "rules-linear-16000",
        iterations: (10, 260),
        baseline: Some("rules-indexed-16000"),
        what: "rules::lookup_linear (reference scan), the same 16,000 rules",
        run: |n| rules_case(16_000, true, n),
    },
    Case {
        name: "connect-1",
        iterations: (1_000, 11_000),
        baseline: None,
        what: "policy::decide, the socket filter's connect decision (proxy process and address checks, then the rules), 1 rule",
        run: |n| connect_case(1, n),
    },
    Case {
        name: "connect-10000",
        iterations: (1_000, 11_000),
        baseline: Some("connect-1"),
        what: "policy::decide, the socket filter's connect decision, 10,000 rules (ratio: to 1 rule)",
        run: |n| connect_case(10_000, n),
    },
    Case {
        name: "rules-build-10000",
        iterations: (2, 4),
        baseline: None,
        what: "RuleSet::new of 10,000 rules (validation + index build, storage copied in as the kext's from_msg does); memory in the summary",
        run: |n| rules_build(10_000, n),
    },
    Case {
        name: "nat-lookup",
        iterations: (1_000, 11_000),
        baseline: None,
        what: "NatTable::outbound hit (live flow), table 90 % full",
        run: nat_lookup,
    },
    Case {
        name: "nat-miss",
        iterations: (1_000, 11_000),
        baseline: None,
        what: "NatTable::outbound miss (untracked flow), table 90 % full",
        run: nat_miss,
    },
    Case {
        name: "nat-insert",
        iterations: (100, 1_100),
        baseline: None,
        what: "NatTable::insert of a new flow (with its reclamation check), table 90 % full",
        run: nat_insert,
    },
    Case {
        name: "nat-expire",
        iterations: (100, 1_100),
        baseline: None,
        what: "NatTable::outbound meeting an expired flow: removal from both indexes, table 90 % full",
        run: nat_expire,
    },
    Case {
        name: "checksum-incremental",
        iterations: (1_000, 11_000),
        baseline: None,
        what: "translate::rewrite of the destination of a 1,500-byte IPv4 TCP packet (RFC 1624 updates)",
        run: checksum_incremental,
    },
    Case {
        name: "checksum-full",
        iterations: (1_000, 11_000),
        baseline: Some("checksum-incremental"),
        what: "the same rewrite with both checksums recomputed in full (1,460-byte payload)",
        run: checksum_full,
    },
    Case {
        name: "control-decode-1000",
        iterations: (10, 110),
        baseline: None,
        what: "control::decode_set of a 1,000-rule SetRules message + iterating RulesMsg::rules()",
        run: control_decode,
    },
];

/// Flows and the kext's table have the same load factor here; the instruction
/// counts depend on the load factor (probe lengths), not on the size. This
/// size leaves room for the inserting cases' iterations (the kext's own table
/// is smaller by default).
type Table = NatTable<Vec<Entry>>;
const CAPACITY: usize = 65_536;
/// 90 % of the table.
const FILL90: usize = CAPACITY * 9 / 10;
/// 50 % of the table.
const FILL50: usize = CAPACITY / 2;
const SEED: u64 = 0x5eed_1234_abcd_0001;
/// The clock during measurement (flows are created at 0).
const NOW: u64 = 1_000;

const CLIENT4: Endpoint = v4([10, 0, 0, 2], 50_000);
const ORIG4: Endpoint = v4([203, 0, 113, 10], 443);
const PROXY4: Endpoint = v4([192, 0, 2, 1], 3128);
const CLIENT6: Endpoint = v6(doc6(1, 0, 2), 50_000);
const ORIG6: Endpoint = v6(doc6(0x203, 0, 0x10), 443);
const PROXY6: Endpoint = v6(doc6(2, 0, 1), 3128);

type Rules = RuleSet<Vec<Rule>, Vec<IndexEntry>>;

fn rule_set(rules: Vec<Rule>, default: Action) -> Result<Rules> {
    let n = rules::index_len(rules.len());
    RuleSet::new(rules, vec![IndexEntry::default(); n], default)
        .map_err(|e| anyhow!("rule set refused: {e:?}"))
}

fn new_table() -> Box<Table> {
    match NatTable::new(vec![Entry::EMPTY; CAPACITY], Config::DEFAULT, SEED) {
        Ok(t) => Box::new(t),
        Err(e) => unreachable!("{CAPACITY} is a valid capacity: {e:?}"),
    }
}

/// The `i`-th filler flow (distinct client endpoints, so distinct reverse keys):
/// 10.x.y.z (x ≥ 1) or 2001:db8:1:x::y to 203.0.113.0/24 or 2001:db8:203::/48.
fn filler(i: usize, v6: bool) -> FlowKey {
    let b = i.to_be_bytes();
    let [b1, b2, b3] = [b[5], b[6], b[7]];
    let port = 1024 + (i % 50_000) as u16;
    let (src, dst) = if v6 {
        (
            self::v6(
                doc6(1, 1 + u16::from(b1), u16::from_be_bytes([b2, b3])),
                port,
            ),
            self::v6(doc6(0x203, 0, 1 + (i % 250) as u16), 443),
        )
    } else {
        (
            self::v4([10, 1 + b1, b2, b3], port),
            self::v4([203, 0, 113, 1 + (i % 250) as u8], 443),
        )
    };
    FlowKey {
        protocol: proto::TCP,
        src,
        dst,
    }
}

/// Inserts the filler flows `keys` at time 0.
fn fill(table: &mut Table, keys: &[FlowKey]) -> Result<()> {
    for k in keys {
        let proxy = match k.src.addr {
            IpAddr::V4(_) => PROXY4,
            IpAddr::V6(_) => PROXY6,
        };
        table
            .insert(*k, proxy, tcp::SYN, 0)
            .map_err(|e| anyhow!("filling the table: {e:?}"))?;
    }
    Ok(())
}

fn proxies() -> Proxies {
    Proxies {
        v4: Some(PROXY4),
        v6: Some(PROXY6),
        ..Proxies::default()
    }
}

/// The IP filter's rules: 1,000 generated rules (none covers the benchmark's
/// destinations), then `203.0.113.0/24` and `2001:db8:203::/48` TCP → proxy.
fn policy_rules() -> Result<Rules> {
    let mut rules = input::rules(1_000, SEED);
    for (a, p) in [
        (IpAddr::V4([203, 0, 113, 0]), 24),
        (IpAddr::V6(doc6(0x203, 0, 0)), 48),
    ] {
        rules.push(Rule {
            protocol: Protocol::Tcp,
            dst: Some(Cidr::new(a, p).context("bad CIDR")?),
            action: Action::Proxy { proxy_v2: false },
            ..Rule::default()
        });
    }
    rule_set(rules, Action::Direct)
}

const PREFIX_MAX: usize = 64;

/// The state of the packet-path cases.
struct PacketPath {
    table: Box<Table>,
    rules: Rules,
    proxies: Proxies,
    /// The whole packet, for the deep check.
    full: Vec<u8>,
    /// Its header prefix, as the kext copies it out of the mbuf chain.
    template: [u8; PREFIX_MAX],
    /// Prefix length.
    n: usize,
    /// The buffer each operation copies the template into and rewrites.
    buf: [u8; PREFIX_MAX],
    /// syn-v4: the next client port/address.
    next: u64,
}

impl PacketPath {
    fn new(full: Vec<u8>, n: usize) -> Result<Self> {
        ensure!(n <= PREFIX_MAX && n <= full.len(), "prefix too long");
        let mut template = [0u8; PREFIX_MAX];
        template[..n].copy_from_slice(&full[..n]);
        Ok(PacketPath {
            table: new_table(),
            rules: policy_rules()?,
            proxies: proxies(),
            full,
            template,
            n,
            buf: [0; PREFIX_MAX],
            next: 0,
        })
    }

    fn output(&mut self) -> Decision {
        let n = self.n;
        self.buf[..n].copy_from_slice(&self.template[..n]);
        let policy = RulesPolicy {
            enabled: true,
            rules: &self.rules,
            proxies: &self.proxies,
        };
        filter::output(
            &mut self.buf[..n],
            self.full.len(),
            &mut self.table,
            &policy,
            NOW,
        )
    }

    fn input(&mut self) -> Decision {
        let n = self.n;
        self.buf[..n].copy_from_slice(&self.template[..n]);
        filter::input(&mut self.buf[..n], self.full.len(), &mut self.table, NOW)
    }

    /// The fast path on the whole packet as its first mbuf (the header
    /// prefix copied in first, as the other cases do), as natpath runs it:
    /// the headers checked once, then one body per header shape.
    fn fast(&mut self, first: &mut [u8], addrs: &ProxyAddrs, output: bool) -> Decision {
        let n = self.n;
        first[..n].copy_from_slice(&self.template[..n]);
        let body = Fast {
            table: &mut self.table,
            addrs,
            output,
        };
        fastpath::with_plain(first, body).unwrap_or(Decision::Pass)
    }

    /// The decision rewrote the packet, and its endpoints are now `src` →
    /// `dst`; with `deep`, the whole packet's checksums verify by full
    /// recomputation.
    fn check(&self, d: Decision, src: Endpoint, dst: Endpoint, deep: bool) -> Result<()> {
        let Decision::Rewritten { changed } = d else {
            bail!("decision {d:?}, expected Rewritten");
        };
        ensure!(
            changed <= self.n,
            "Rewritten {{ changed: {changed} }} beyond the prefix"
        );
        let mut full = self.full.clone();
        full[..self.n].copy_from_slice(&self.buf[..self.n]);
        if deep {
            input::verify(&full).context("the rewritten packet")?;
        }
        let got = endpoints(&full)?;
        ensure!(
            got == (src, dst),
            "rewritten to {got:?}, expected {:?}",
            (src, dst)
        );
        Ok(())
    }
}

fn endpoints(packet: &[u8]) -> Result<(Endpoint, Endpoint)> {
    let t = ip::transport(packet).map_err(|e| anyhow!("unparseable: {e:?}"))?;
    let port = |at: usize| {
        packet
            .get(at..at + 2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .context("truncated")
    };
    Ok((
        Endpoint {
            addr: t.src,
            port: port(t.offset)?,
        },
        Endpoint {
            addr: t.dst,
            port: port(t.offset + 2)?,
        },
    ))
}

/// An established flow `client` → `orig` (redirected to `proxy`) among
/// 50 % filler flows.
fn established(
    client: Endpoint,
    orig: Endpoint,
    proxy: Endpoint,
    full: Vec<u8>,
    n: usize,
) -> Result<PacketPath> {
    let mut s = PacketPath::new(full, n)?;
    let v6 = matches!(client.addr, IpAddr::V6(_));
    let keys: Vec<FlowKey> = (0..FILL50 - 1).map(|i| filler(i, v6)).collect();
    fill(&mut s.table, &keys)?;
    let key = FlowKey {
        protocol: proto::TCP,
        src: client,
        dst: orig,
    };
    s.table
        .insert(key, proxy, tcp::SYN, 0)
        .map_err(|e| anyhow!("inserting the flow: {e:?}"))?;
    ensure!(s.table.len() == FILL50, "table not 50 % full");
    Ok(s)
}

/// A data segment (ACK|PSH) `src` → `dst` with `options` bytes of TCP options,
/// 1,500 bytes long.
fn data_packet(src: Endpoint, dst: Endpoint, options: usize) -> Result<(Vec<u8>, usize)> {
    let ip_len = match src.addr {
        IpAddr::V4(_) => 20,
        IpAddr::V6(_) => 40,
    };
    let hdr = ip_len + 20 + options;
    let p = Tcp {
        src,
        dst,
        flags: tcp::ACK | 0x08,
        options,
        payload: 1_500 - hdr,
    }
    .build()?;
    Ok((p, hdr))
}

fn output_case(
    client: Endpoint,
    orig: Endpoint,
    proxy: Endpoint,
    options: usize,
    n: u64,
) -> Result<String> {
    let (full, hdr) = data_packet(client, orig, options)?;
    let mut s = established(client, orig, proxy, full, hdr)?;
    let d = s.output();
    s.check(d, client, proxy, true)?;
    let d = measured(&mut s, n, |s, _| s.output());
    s.check(d, client, proxy, true)?;
    Ok(format!(
        "Rewritten to the proxy, checksums verified, {hdr}-byte prefix"
    ))
}

fn output_v4(n: u64) -> Result<String> {
    // NOP NOP timestamp: 20 + 32 bytes.
    output_case(CLIENT4, ORIG4, PROXY4, 12, n)
}

fn output_v6(n: u64) -> Result<String> {
    output_case(CLIENT6, ORIG6, PROXY6, 0, n)
}

fn input_case(
    client: Endpoint,
    orig: Endpoint,
    proxy: Endpoint,
    options: usize,
    n: u64,
) -> Result<String> {
    let (full, hdr) = data_packet(proxy, client, options)?;
    let mut s = established(client, orig, proxy, full, hdr)?;
    let d = s.input();
    s.check(d, orig, client, true)?;
    let d = measured(&mut s, n, |s, _| s.input());
    s.check(d, orig, client, true)?;
    Ok(format!(
        "Rewritten back to the original destination, checksums verified, {hdr}-byte prefix"
    ))
}

/// The fast path's body for the bench (natpath's `FastOutput`/`FastInput`
/// without the kernel: no clock, no lock).
struct Fast<'t> {
    table: &'t mut Table,
    addrs: &'t ProxyAddrs,
    output: bool,
}

impl OnPlain for Fast<'_> {
    type Out = Decision;

    #[inline(always)]
    fn on<const IP: usize, const A: usize, const L4: usize>(
        self,
        p: Plain<'_, IP, A, L4>,
    ) -> Decision {
        let (tracked, side) = if self.output {
            let t = fastpath::track_output(self.table, self.addrs, &p.key, p.flags, NOW);
            (t, Side::Dst)
        } else {
            let t = fastpath::track_input(self.table, &p.key, p.flags, NOW);
            (t, Side::Src)
        };
        match tracked {
            Tracked::To(to) => match p.rewrite(side, &to, L4Sum::Complete) {
                Ok(changed) => Decision::Rewritten { changed },
                Err(_) => Decision::Drop(filter::DropReason::Unparseable),
            },
            Tracked::Pass | Tracked::Untracked => Decision::Pass,
        }
    }
}

fn fast_case(
    client: Endpoint,
    orig: Endpoint,
    proxy: Endpoint,
    options: usize,
    output: bool,
    n: u64,
) -> Result<String> {
    let (full, hdr) = if output {
        data_packet(client, orig, options)?
    } else {
        data_packet(proxy, client, options)?
    };
    let mut s = established(client, orig, proxy, full.clone(), hdr)?;
    let addrs = ProxyAddrs::of(&s.proxies);
    let mut first = full;
    let (src, dst) = if output {
        (client, proxy)
    } else {
        (orig, client)
    };
    let d = s.fast(&mut first, &addrs, output);
    s.buf[..hdr].copy_from_slice(&first[..hdr]);
    s.check(d, src, dst, true)?;
    let d = measured(&mut s, n, |s, _| s.fast(&mut first, &addrs, output));
    s.buf[..hdr].copy_from_slice(&first[..hdr]);
    s.check(d, src, dst, true)?;
    Ok(format!(
        "{}, checksums verified, the whole {}-byte packet as the first mbuf",
        if output {
            "Rewritten to the proxy"
        } else {
            "Rewritten back to the original destination"
        },
        first.len()
    ))
}

fn input_v4(n: u64) -> Result<String> {
    input_case(CLIENT4, ORIG4, PROXY4, 12, n)
}

fn input_v6(n: u64) -> Result<String> {
    input_case(CLIENT6, ORIG6, PROXY6, 0, n)
}

/// The client endpoint of the `i`-th SYN: 172.16.0.2:1024 upwards.
fn syn_client(i: u64) -> Endpoint {
    let port = 1024 + (i % 64_000) as u16;
    let hi = (i / 64_000) as u8;
    v4([172, 16 + hi, 0, 2], port)
}

fn syn_v4(n: u64) -> Result<String> {
    ensure!(
        FILL50 as u64 + n < CAPACITY as u64,
        "at most {} iterations",
        CAPACITY - FILL50 - 1
    );
    // MSS, SACK-permitted, timestamps, window scale: 20 + 40 bytes.
    let full = Tcp {
        src: syn_client(0),
        dst: ORIG4,
        flags: tcp::SYN,
        options: 20,
        payload: 0,
    }
    .build()?;
    let len = full.len();
    let mut s = PacketPath::new(full, len)?;
    let keys: Vec<FlowKey> = (0..FILL50).map(|i| filler(i, false)).collect();
    fill(&mut s.table, &keys)?;
    // Each SYN comes from a new client endpoint (its checksums are not fixed
    // up after the first: the filter does not verify them).
    let op = |s: &mut PacketPath, _: u64| {
        let c = syn_client(s.next);
        s.next += 1;
        if let IpAddr::V4(a) = c.addr {
            s.template[12..16].copy_from_slice(&a);
        }
        s.template[20..22].copy_from_slice(&c.port.to_be_bytes());
        s.output()
    };
    let d = op(&mut s, 0);
    s.check(d, syn_client(0), PROXY4, true)?;
    let d = measured(&mut s, n, op);
    s.check(d, syn_client(n), PROXY4, false)?;
    ensure!(
        s.table.len() == FILL50 + 1 + n as usize,
        "{} flows after {} SYNs",
        s.table.len(),
        n + 1
    );
    Ok(format!(
        "each SYN Rewritten to the proxy and a flow created ({} flows)",
        s.table.len()
    ))
}

struct RulesBench {
    rules: Rules,
    queries: Vec<rules::Conn<'static>>,
    expected: Vec<Outcome>,
}

/// 250 queries: `(high − low)` of every case's iterations is a multiple, so the
/// difference covers each query equally often.
const QUERIES: usize = 250;

fn rules_case(count: usize, linear: bool, n: u64) -> Result<String> {
    let list = input::rules(count, SEED ^ count as u64);
    let queries = input::queries(&list, QUERIES, SEED.wrapping_add(1));
    let rules = rule_set(list, Action::Direct)?;
    let mut expected = Vec::with_capacity(QUERIES);
    for q in &queries {
        let v = rules.lookup(q);
        let l = rules::lookup_linear(rules.rules(), Action::Direct, q);
        ensure!(v == l, "indexed {v:?} ≠ linear {l:?} for {q:?}");
        expected.push(v);
    }
    let hits = expected.iter().filter(|v| v.rule.is_some()).count();
    let mut s = RulesBench {
        rules,
        queries,
        expected,
    };
    let op = |s: &mut RulesBench, i: u64| {
        let q = &s.queries[(i % QUERIES as u64) as usize];
        if linear {
            rules::lookup_linear(s.rules.rules(), Action::Direct, q)
        } else {
            s.rules.lookup(q)
        }
    };
    let v = measured(&mut s, n, op);
    let want = s.expected[((n - 1) % QUERIES as u64) as usize];
    ensure!(v == want, "last lookup gave {v:?}, expected {want:?}");
    Ok(format!(
        "{count} rules; all {QUERIES} queries agree with the linear scan; {hits} match a rule"
    ))
}

/// The socket filter's proxies in the connect cases: the bench's proxy
/// addresses, and a proxy process that the queries (pid 4242, `firefox`) are not.
fn connect_proxies() -> Proxies {
    Proxies {
        v4: Some(PROXY4),
        v6: Some(PROXY6),
        pid: Some(77),
        name: None,
    }
}

/// What [`policy::decide`] must answer for `q`, worked out from the reference
/// scan ([`rules::lookup_linear`]) and the policy's documented order: the
/// proxy's own process and address pass, then the first matching rule; a
/// redirect goes to the proxy of the socket's family.
fn connect_expected(list: &[Rule], q: &rules::Conn<'_>) -> policy::Connect {
    use policy::{Connect as D, PassReason};
    let (p4, p6): (Endpoint, Endpoint) = (PROXY4, PROXY6);
    let canon = q.dst.canonical();
    if [p4, p6].iter().any(|p| p.canonical() == canon) {
        return D::Pass(PassReason::ProxyAddress);
    }
    let v = rules::lookup_linear(list, Action::Direct, q);
    let rule = v.rule.unwrap_or(u32::MAX);
    match v.action {
        Action::Direct => D::Pass(PassReason::Rules),
        Action::Block => D::Block { rule },
        Action::Proxy { proxy_v2 } => D::Redirect {
            to: match q.dst.addr {
                IpAddr::V4(_) => p4,
                IpAddr::V6(_) => p6,
            },
            proxy_v2,
            rule,
        },
    }
}

struct ConnectBench {
    rules: Rules,
    proxies: Proxies,
    queries: Vec<rules::Conn<'static>>,
}

/// `policy::decide` as the socket filter's `connect_out` calls it, for
/// sockets of the destination's family.
fn connect_case(count: usize, n: u64) -> Result<String> {
    let list = input::rules(count, SEED ^ count as u64);
    let queries = input::queries(&list, QUERIES, SEED.wrapping_add(1));
    let rules = rule_set(list, Action::Direct)?;
    let family = |q: &rules::Conn<'_>| match q.dst.addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    };
    let proxies = connect_proxies();
    let mut redirected = 0;
    for q in &queries {
        let d = policy::decide(true, &rules, &proxies, family(q), q);
        let want = connect_expected(rules.rules(), q);
        ensure!(
            d == want,
            "decide gave {d:?}, the reference {want:?} for {q:?}"
        );
        redirected += usize::from(matches!(d, policy::Connect::Redirect { .. }));
    }
    let mut s = ConnectBench {
        rules,
        proxies,
        queries,
    };
    let op = |s: &mut ConnectBench, i: u64| {
        let q = &s.queries[(i % QUERIES as u64) as usize];
        policy::decide(true, &s.rules, &s.proxies, family(q), q)
    };
    let d = measured(&mut s, n, op);
    let q = &s.queries[((n - 1) % QUERIES as u64) as usize];
    let want = connect_expected(s.rules.rules(), q);
    ensure!(d == want, "last decision {d:?}, expected {want:?}");
    Ok(format!(
        "{count} rules; all {QUERIES} decisions agree with the reference scan; {redirected} redirected"
    ))
}

/// Builds a `count`-rule set `n` times, as the kext does on `SetRules`: the
/// rules copied into fresh storage, fresh index storage, [`RuleSet::new`].
fn rules_build(count: usize, n: u64) -> Result<String> {
    let list = input::rules(count, SEED ^ count as u64);
    let queries = input::queries(&list, QUERIES, SEED.wrapping_add(1));
    let op = |list: &mut Vec<Rule>, _: u64| rule_set(list.clone(), Action::Direct);
    let mut list = list;
    let built = measured(&mut list, n, op)?;
    for q in &queries {
        let v = built.lookup(q);
        let l = rules::lookup_linear(built.rules(), Action::Direct, q);
        ensure!(v == l, "indexed {v:?} ≠ linear {l:?} for {q:?}");
    }
    let rules_bytes = count * std::mem::size_of::<Rule>();
    let index_bytes = rules::index_len(count) * std::mem::size_of::<IndexEntry>();
    Ok(format!(
        "{count} rules built; all {QUERIES} queries agree with the linear scan; memory {} KiB (rules {} KiB + index {} KiB)",
        (rules_bytes + index_bytes) / 1024,
        rules_bytes / 1024,
        index_bytes / 1024
    ))
}

struct NatBench {
    table: Box<Table>,
    keys: Vec<FlowKey>,
    next: usize,
}

/// A table holding `FILL90` filler flows and the keys: the fillers, then
/// `extra` more.
fn nat90(extra: usize) -> Result<NatBench> {
    let keys: Vec<FlowKey> = (0..FILL90 + extra).map(|i| filler(i, false)).collect();
    let mut table = new_table();
    fill(&mut table, &keys[..FILL90])?;
    Ok(NatBench {
        table,
        keys,
        next: 0,
    })
}

fn nat_lookup(n: u64) -> Result<String> {
    let mut s = nat90(0)?;
    let op = |s: &mut NatBench, i: u64| {
        let k = s.keys[(i % FILL90 as u64) as usize];
        s.table.outbound(&k, tcp::ACK, NOW)
    };
    ensure!(op(&mut s, 0) == Some(PROXY4), "a live flow was not found");
    let r = measured(&mut s, n, op);
    ensure!(r == Some(PROXY4), "last lookup gave {r:?}");
    ensure!(s.table.len() == FILL90, "flows were lost");
    Ok(format!("found the proxy, {} flows", s.table.len()))
}

fn nat_miss(n: u64) -> Result<String> {
    let mut s = nat90(0)?;
    // Untracked: the same kind of flows from 11.0.0.0/8.
    for k in &mut s.keys {
        if let IpAddr::V4(a) = &mut k.src.addr {
            a[0] = 11;
        }
    }
    let op = |s: &mut NatBench, i: u64| {
        let k = s.keys[(i % FILL90 as u64) as usize];
        s.table.outbound(&k, tcp::ACK, NOW)
    };
    ensure!(op(&mut s, 0).is_none(), "an untracked flow was found");
    let r = measured(&mut s, n, op);
    ensure!(r.is_none(), "last lookup gave {r:?}");
    ensure!(s.table.len() == FILL90, "flows changed");
    Ok(format!("nothing found, {} flows", s.table.len()))
}

fn nat_insert(n: u64) -> Result<String> {
    let extra = usize::try_from(n)?.saturating_add(1);
    ensure!(
        FILL90 + extra <= CAPACITY,
        "at most {} iterations",
        CAPACITY - FILL90 - 1
    );
    let mut s = nat90(extra)?;
    s.next = FILL90;
    let op = |s: &mut NatBench, _: u64| {
        let k = s.keys[s.next];
        s.next += 1;
        s.table.insert(k, PROXY4, tcp::SYN, NOW).map(|f| f.key)
    };
    let first = op(&mut s, 0);
    ensure!(first == Ok(s.keys[FILL90]), "insert gave {first:?}");
    let r = measured(&mut s, n, op);
    let want = s.keys[FILL90 + extra - 1];
    ensure!(r == Ok(want), "last insert gave {r:?}");
    ensure!(
        s.table.len() == FILL90 + extra,
        "{} flows, expected {}",
        s.table.len(),
        FILL90 + extra
    );
    Ok(format!(
        "inserted {extra} flows, {} → {} flows",
        FILL90,
        s.table.len()
    ))
}

fn nat_expire(n: u64) -> Result<String> {
    let gone = usize::try_from(n)?.saturating_add(1);
    ensure!(gone <= FILL90, "at most {} iterations", FILL90 - 1);
    let mut s = nat90(0)?;
    // Every flow was last seen at 0: all have expired by then.
    let later = Config::DEFAULT.tcp_idle_ms + 1;
    let op = |s: &mut NatBench, _: u64| {
        let k = s.keys[s.next];
        s.next += 1;
        s.table.outbound(&k, tcp::ACK, later)
    };
    ensure!(op(&mut s, 0).is_none(), "an expired flow was used");
    ensure!(
        s.table.len() == FILL90 - 1,
        "the expired flow was not removed"
    );
    let r = measured(&mut s, n, op);
    ensure!(r.is_none(), "an expired flow was used");
    ensure!(
        s.table.len() == FILL90 - gone,
        "{} flows, expected {}",
        s.table.len(),
        FILL90 - gone
    );
    Ok(format!(
        "removed {gone} expired flows, {FILL90} → {} flows",
        s.table.len()
    ))
}

struct ChecksumBench {
    packet: Vec<u8>,
    t: ip::Transport,
}

/// A 1,500-byte IPv4 TCP packet (20 + 20 + 1,460) to `ORIG4`; operation `i`
/// rewrites its destination to `PROXY4` (even `i`) or back to `ORIG4` (odd).
fn checksum_bench() -> Result<ChecksumBench> {
    let (packet, _) = data_packet(CLIENT4, ORIG4, 0)?;
    ensure!(packet.len() == 1_500, "packet length {}", packet.len());
    let t = ip::transport(&packet).map_err(|e| anyhow!("unparseable: {e:?}"))?;
    Ok(ChecksumBench { packet, t })
}

fn target(i: u64) -> Endpoint {
    if i.is_multiple_of(2) { PROXY4 } else { ORIG4 }
}

fn incremental(s: &mut ChecksumBench, i: u64) -> Result<usize, translate::Refused> {
    let to = target(i);
    translate::rewrite(&mut s.packet, &s.t, Side::Dst, to.addr, to.port)
}

/// The same rewrite by full recomputation of the IPv4 header and TCP checksums.
fn full(s: &mut ChecksumBench, i: u64) -> u16 {
    let to = target(i);
    if let IpAddr::V4(a) = to.addr {
        s.packet[16..20].copy_from_slice(&a);
    }
    s.packet[22..24].copy_from_slice(&to.port.to_be_bytes());
    s.packet[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&s.packet[..20]);
    s.packet[10..12].copy_from_slice(&c.to_be_bytes());
    s.packet[36..38].copy_from_slice(&[0, 0]);
    let c = checksum::transport(&s.t.src, &to.addr, proto::TCP, &s.packet[20..]);
    s.packet[36..38].copy_from_slice(&c.to_be_bytes());
    c
}

/// Both ways of rewriting agree byte for byte, and the result verifies.
fn checksum_precheck() -> Result<()> {
    let mut a = checksum_bench()?;
    let mut b = checksum_bench()?;
    for i in 0..4 {
        incremental(&mut a, i).map_err(|e| anyhow!("rewrite refused: {e:?}"))?;
        full(&mut b, i);
        ensure!(
            a.packet == b.packet,
            "incremental ≠ full after {} rewrites",
            i + 1
        );
        input::verify(&a.packet)?;
    }
    Ok(())
}

fn checksum_postcheck(s: &ChecksumBench, n: u64) -> Result<()> {
    input::verify(&s.packet).context("after the last rewrite")?;
    let (_, dst) = endpoints(&s.packet)?;
    ensure!(dst == target(n - 1), "destination {dst:?}");
    Ok(())
}

fn checksum_incremental(n: u64) -> Result<String> {
    checksum_precheck()?;
    let mut s = checksum_bench()?;
    let r = measured(&mut s, n, incremental);
    ensure!(r == Ok(38), "rewrite gave {r:?}");
    checksum_postcheck(&s, n)?;
    Ok("equal to full recomputation; checksums verify".into())
}

fn checksum_full(n: u64) -> Result<String> {
    checksum_precheck()?;
    let mut s = checksum_bench()?;
    measured(&mut s, n, full);
    checksum_postcheck(&s, n)?;
    Ok("equal to the incremental rewrite; checksums verify".into())
}

fn control_decode(n: u64) -> Result<String> {
    const COUNT: usize = 1_000;
    let rules = input::rules(COUNT, SEED ^ 0xc0);
    let len = control::rules_len(COUNT).context("rules_len")?;
    let mut buf = vec![0u8; len];
    let written = control::encode_rules(Action::Block, &rules, &mut buf)
        .map_err(|e| anyhow!("encode_rules: {e:?}"))?;
    ensure!(written == len, "encoded {written} of {len} bytes");
    match control::decode_set(Op::SetRules as i32, &buf) {
        Ok(SetRequest::Rules(msg)) => {
            let back: Result<Vec<Rule>, _> = msg.rules().collect();
            let back = back.map_err(|e| anyhow!("decoding a rule: {e:?}"))?;
            ensure!(back == rules, "decoded rules differ from the encoded ones");
            ensure!(msg.default_action() == Action::Block, "default action");
        }
        other => bail!("decode_set gave {other:?}"),
    }
    let op = |buf: &mut Vec<u8>, _: u64| match control::decode_set(Op::SetRules as i32, buf) {
        Ok(SetRequest::Rules(msg)) => {
            let mut ok = 0usize;
            for r in msg.rules().flatten() {
                std::hint::black_box(r);
                ok += 1;
            }
            ok
        }
        _ => 0,
    };
    let ok = measured(&mut buf, n, op);
    ensure!(ok == COUNT, "decoded {ok} rules");
    Ok(format!(
        "{COUNT} rules decoded, equal to the encoded ones ({len}-byte message)"
    ))
}

struct FloorBench {
    table: floor::Table,
    template: [u8; PREFIX_MAX],
    buf: [u8; PREFIX_MAX],
    n: usize,
    packet_len: usize,
}

fn floor_case(n: u64) -> Result<String> {
    let (full, hdr) = data_packet(CLIENT4, ORIG4, 12)?;
    let mut table = floor::Table::new(CAPACITY, SEED);
    let ep = |e: Endpoint| match e.addr {
        IpAddr::V4(a) => Ok((a, e.port)),
        IpAddr::V6(_) => Err(anyhow!("the floor is IPv4")),
    };
    let (proxy, proxy_port) = ep(PROXY4)?;
    let proxy = u32::from_be_bytes(proxy);
    for i in 0..FILL50 - 1 {
        let k = filler(i, false);
        let ((s, sp), (d, dp)) = (ep(k.src)?, ep(k.dst)?);
        ensure!(
            table.insert(floor::key(s, sp, d, dp), proxy, proxy_port),
            "table full"
        );
    }
    let ((s, sp), (d, dp)) = (ep(CLIENT4)?, ep(ORIG4)?);
    ensure!(
        table.insert(floor::key(s, sp, d, dp), proxy, proxy_port),
        "table full"
    );
    ensure!(table.len() == FILL50, "floor table not 50 % full");
    let mut template = [0u8; PREFIX_MAX];
    template[..hdr].copy_from_slice(&full[..hdr]);
    let mut b = FloorBench {
        table,
        template,
        buf: [0; PREFIX_MAX],
        n: hdr,
        packet_len: full.len(),
    };
    let op = |b: &mut FloorBench, _: u64| {
        let n = b.n;
        b.buf[..n].copy_from_slice(&b.template[..n]);
        floor::translate(&mut b.buf[..n], b.packet_len, &b.table)
    };
    // The filter's rewrite of the same packet, byte for byte.
    let mut s = established(CLIENT4, ORIG4, PROXY4, full, hdr)?;
    let d = s.output();
    s.check(d, CLIENT4, PROXY4, true)?;
    let Decision::Rewritten { changed } = d else {
        bail!("filter::output gave {d:?}");
    };
    let first = op(&mut b, 0);
    ensure!(
        first == changed,
        "the floor changed {first} bytes, the filter {changed}"
    );
    ensure!(
        b.buf[..hdr] == s.buf[..hdr],
        "the floor's rewrite differs from filter::output's"
    );
    let r = measured(&mut b, n, op);
    ensure!(
        r == changed,
        "the floor changed {r} bytes, the filter {changed}"
    );
    ensure!(
        b.buf[..hdr] == s.buf[..hdr],
        "the floor's rewrite differs from filter::output's"
    );
    Ok(format!(
        "rewritten exactly as filter::output does ({hdr}-byte prefix)"
    ))
}
