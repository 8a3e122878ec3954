//! Names of the kexts' statistics counters for the emulator's reports (the
//! ids of `common::net::control::stat`; the emulator cannot link `common`,
//! see vm/Cargo.toml). prxctl's tests check that both name every id alike.

/// `(id, name)` of every fixed counter.
pub const NAMES: &[(u32, &str)] = &[
    (1, "connections seen"),
    (2, "connections redirected"),
    (3, "connections passed"),
    (4, "redirects failed"),
    (5, "connections blocked"),
    (6, "PROXY v2 headers sent"),
    (7, "sockets attached"),
    (8, "original destinations dropped (table full)"),
    (9, "rule sets installed"),
    (0x100, "NAT flows"),
    (0x101, "packets redirected"),
    (0x102, "reply packets rewritten"),
    (0x103, "NAT flow capacity"),
    (0x104, "IP filters attached"),
    (0x105, "NAT timeout: TCP idle (s)"),
    (0x106, "NAT timeout: TCP after close (s)"),
    (0x107, "NAT timeout: UDP idle (s)"),
    (0x300, "log level (0 off, 1 decisions, 2 debug)"),
    (0x301, "log lines suppressed (rate limit)"),
];

/// Drop reasons, in the order of `common::net::filter::DropReason::ALL`
/// (counter `0x200 + index`).
pub const DROP_REASONS: &[&str] = &[
    "unparseable",
    "table full",
    "flow collision",
    "IPv6 UDP checksum 0",
    "busy",
    "mbuf failure",
    "inject failure",
    "blocked by a rule",
];

/// A counter's name.
pub fn name(id: u32) -> String {
    if let Some((_, n)) = NAMES.iter().find(|(i, _)| *i == id) {
        return (*n).to_string();
    }
    match id.checked_sub(0x200).filter(|r| *r < 0x100) {
        Some(r) => match DROP_REASONS.get(r as usize) {
            Some(d) => format!("packets dropped: {d}"),
            None => format!("packets dropped: reason {r}"),
        },
        None => format!("counter {id:#x}"),
    }
}

/// Counters as `name value; name value; …` for a report line.
pub fn render(counters: &[(u32, u64)]) -> String {
    counters
        .iter()
        .map(|(id, v)| format!("{} {v}", name(*id)))
        .collect::<Vec<_>>()
        .join("; ")
}
