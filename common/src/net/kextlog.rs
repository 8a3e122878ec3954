//! What the kexts log, and how much: the log level set through the control
//! (`prxctl log-level off|decisions|debug`), the rate limiter that keeps a
//! flood of decisions from filling the kernel log, and a fixed-size line
//! buffer to format a line without allocating. Pure logic: the kexts keep the
//! limiter's state in one atomic word and call [`admit`] in a compare-and-swap
//! loop (`common::kpi::log::Logger`).
//!
//! Every kext line starts with `prx: <Kext>: ` (the kernel `printf` adds the
//! `prx: `), so `log show --predicate 'eventMessage BEGINSWITH "prx: "'` finds
//! them all.

use core::fmt;

/// How much a kext logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum LogLevel {
    /// Start and stop only.
    Off = 0,
    /// Also rule changes, redirects, blocks and failures (the default).
    #[default]
    Decisions = 1,
    /// Also every connection or flow that passes unchanged.
    Debug = 2,
}

impl LogLevel {
    /// The level with this number.
    pub fn from_u8(v: u8) -> Option<LogLevel> {
        match v {
            0 => Some(LogLevel::Off),
            1 => Some(LogLevel::Decisions),
            2 => Some(LogLevel::Debug),
            _ => None,
        }
    }

    /// Its name, as `prxctl log-level` takes it.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Decisions => "decisions",
            LogLevel::Debug => "debug",
        }
    }

    /// The level named `s`.
    pub fn parse(s: &str) -> Option<LogLevel> {
        [LogLevel::Off, LogLevel::Decisions, LogLevel::Debug]
            .into_iter()
            .find(|l| l.name() == s)
    }
}

/// Length of a rate-limit window, in milliseconds.
pub const WINDOW_MS: u64 = 1000;
/// Lines allowed per window; the rest are counted and summed up in one line
/// when the next line is allowed.
pub const BURST: u16 = 20;

/// What the limiter says about one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Log it; first say that `suppressed` lines were dropped before it (when
    /// not zero).
    Log {
        /// Lines dropped since the last one logged.
        suppressed: u16,
    },
    /// Drop it (counted).
    Drop,
}

/// The limiter's state packed into a `u64` (for one atomic word):
/// bits 32..64 the window number (`now_ms / WINDOW_MS`, wrapping), 16..32 the
/// lines logged in it, 0..16 the lines dropped since the last one logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimiterState {
    /// The window number.
    pub window: u32,
    /// Lines logged in this window.
    pub used: u16,
    /// Lines dropped since the last logged one (saturating).
    pub suppressed: u16,
}

impl LimiterState {
    /// Packs into a word.
    pub fn pack(self) -> u64 {
        (u64::from(self.window) << 32) | (u64::from(self.used) << 16) | u64::from(self.suppressed)
    }

    /// Unpacks a word made by [`LimiterState::pack`].
    pub fn unpack(w: u64) -> LimiterState {
        LimiterState {
            window: u32::try_from(w >> 32).unwrap_or(0),
            used: u16::try_from((w >> 16) & 0xffff).unwrap_or(0),
            suppressed: u16::try_from(w & 0xffff).unwrap_or(0),
        }
    }
}

/// The decision for one line at `now_ms`, and the next state: at most
/// `burst` lines per window of [`WINDOW_MS`].
pub fn admit(s: LimiterState, now_ms: u64, burst: u16) -> (LimiterState, Admit) {
    let window = u32::try_from((now_ms / WINDOW_MS) & 0xffff_ffff).unwrap_or(0);
    if window != s.window {
        if burst == 0 {
            let next = LimiterState {
                window,
                used: 0,
                suppressed: s.suppressed.saturating_add(1),
            };
            return (next, Admit::Drop);
        }
        let next = LimiterState {
            window,
            used: 1,
            suppressed: 0,
        };
        return (
            next,
            Admit::Log {
                suppressed: s.suppressed,
            },
        );
    }
    if s.used < burst {
        let next = LimiterState {
            window,
            used: s.used.saturating_add(1),
            suppressed: 0,
        };
        (
            next,
            Admit::Log {
                suppressed: s.suppressed,
            },
        )
    } else {
        let next = LimiterState {
            suppressed: s.suppressed.saturating_add(1),
            ..s
        };
        (next, Admit::Drop)
    }
}

/// A line of at most `N - 1` bytes, NUL-terminated, formatted with
/// `core::fmt` without allocating; longer text is cut at a character
/// boundary and ends in `…`.
pub struct LineBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    cut: bool,
}

impl<const N: usize> Default for LineBuf<N> {
    fn default() -> Self {
        LineBuf {
            buf: [0; N],
            len: 0,
            cut: false,
        }
    }
}

impl<const N: usize> LineBuf<N> {
    /// The text so far.
    pub fn as_str(&self) -> &str {
        self.buf
            .get(..self.len)
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// The text with its terminating NUL (for a C `%s`).
    pub fn as_bytes_with_nul(&self) -> &[u8] {
        self.buf.get(..=self.len).unwrap_or(&[])
    }

    /// Whether text was cut.
    pub fn was_cut(&self) -> bool {
        self.cut
    }
}

const ELLIPSIS: &str = "…";

impl<const N: usize> fmt::Write for LineBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.cut {
            return Ok(());
        }
        let limit = N.saturating_sub(1); // the NUL's byte
        let mut take = s.len();
        if self.len.saturating_add(take) > limit {
            self.cut = true;
            // Keep what fits before the ellipsis, at a character boundary.
            let keep = limit.saturating_sub(ELLIPSIS.len());
            if self.len > keep {
                let mut l = keep;
                while l > 0 && !self.as_str_upto(self.len).is_char_boundary(l) {
                    l = l.saturating_sub(1);
                }
                self.len = l;
                take = 0;
            } else {
                take = keep.saturating_sub(self.len).min(s.len());
            }
            while take > 0 && !s.is_char_boundary(take) {
                take = take.saturating_sub(1);
            }
        }
        self.put(s.as_bytes().get(..take).unwrap_or(&[]));
        if self.cut && self.len.saturating_add(ELLIPSIS.len()) <= limit {
            self.put(ELLIPSIS.as_bytes());
        }
        if let Some(d) = self.buf.get_mut(self.len) {
            *d = 0;
        }
        Ok(())
    }
}

impl<const N: usize> LineBuf<N> {
    fn put(&mut self, bytes: &[u8]) {
        for b in bytes {
            if let Some(d) = self.buf.get_mut(self.len) {
                *d = *b;
                self.len = self.len.saturating_add(1);
            }
        }
    }

    fn as_str_upto(&self, n: usize) -> &str {
        self.buf
            .get(..n)
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("")
    }
}

/// A process for log lines: `pid 501 curl` (`?` for a name that is not UTF-8).
#[derive(Debug, Clone, Copy)]
pub struct Who<'a>(pub i32, pub &'a crate::net::rules::ProcName);

impl fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = core::str::from_utf8(self.1.as_bytes()).unwrap_or("?");
        write!(f, "pid {} {name}", Dec(i64::from(self.0)))
    }
}

/// A NAT flow for log lines: `TCP 10.0.0.1:49152 -> 203.0.113.10:80`.
#[derive(Debug, Clone, Copy)]
pub struct Flow(pub crate::net::nat::FlowKey);

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.0.protocol {
            crate::net::wire::proto::TCP => "TCP",
            _ => "UDP",
        };
        let src: crate::net::addr::Endpoint = self.0.src.into();
        let dst: crate::net::addr::Endpoint = self.0.dst.into();
        write!(f, "{p} {} -> {}", Ep(&src), Ep(&dst))
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "host tests"
)]
mod tests {
    use super::*;
    use core::fmt::Write;
    use proptest::prelude::*;

    #[test]
    fn flow_shows_protocol_and_endpoints() {
        use crate::net::addr::{Endpoint, IpAddr};
        let key = crate::net::nat::FlowKey {
            protocol: crate::net::wire::proto::TCP,
            src: Endpoint::new(IpAddr::V4([10, 0, 0, 1]), 49152).into(),
            dst: Endpoint::new(
                IpAddr::V6([0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
                80,
            )
            .into(),
        };
        assert_eq!(
            Flow(key).to_string(),
            "TCP 10.0.0.1:49152 -> [2001:db8::1]:80"
        );
        let udp = crate::net::nat::FlowKey {
            protocol: crate::net::wire::proto::UDP,
            ..key
        };
        assert!(Flow(udp).to_string().starts_with("UDP "));
    }

    #[test]
    fn who_names_the_process() {
        let n = crate::net::rules::ProcName::new(b"curl");
        assert_eq!(Who(501, &n).to_string(), "pid 501 curl");
        let bad = crate::net::rules::ProcName::new(&[0xff, 0xfe]);
        assert_eq!(Who(-1, &bad).to_string(), "pid -1 ?");
    }

    #[test]
    fn levels_have_names_and_numbers() {
        for l in [LogLevel::Off, LogLevel::Decisions, LogLevel::Debug] {
            assert_eq!(LogLevel::parse(l.name()), Some(l));
            assert_eq!(LogLevel::from_u8(l as u8), Some(l));
        }
        assert_eq!(LogLevel::parse("verbose"), None);
        assert_eq!(LogLevel::from_u8(3), None);
        assert_eq!(LogLevel::default(), LogLevel::Decisions);
        assert!(LogLevel::Debug > LogLevel::Decisions && LogLevel::Decisions > LogLevel::Off);
    }

    #[test]
    fn a_flood_is_cut_to_the_burst_and_summed_up_once() {
        let mut s = LimiterState::default();
        let mut logged = 0;
        for i in 0..1000u64 {
            let (n, a) = admit(s, 5_000 + i / 10, BURST);
            s = n;
            if a != Admit::Drop {
                logged += 1;
            }
        }
        assert_eq!(logged, usize::from(BURST));
        assert_eq!(s.suppressed, 1000 - BURST);
        // The next window: logged, with the count of what was dropped.
        let (s2, a) = admit(s, 6_000, BURST);
        assert_eq!(
            a,
            Admit::Log {
                suppressed: 1000 - BURST
            }
        );
        assert_eq!((s2.used, s2.suppressed), (1, 0));
        assert_eq!(LimiterState::unpack(s2.pack()), s2);
    }

    proptest! {
        /// In any window at most `burst` lines are logged, every dropped line
        /// is reported by the next logged one, and packing is lossless.
        #[test]
        fn never_more_than_the_burst_per_window(
            steps in proptest::collection::vec(0u64..1500, 1..400),
            burst in 0u16..30,
        ) {
            let mut s = LimiterState::default();
            let mut now = 1u64 << 40;
            let mut per_window = std::collections::HashMap::<u64, u32>::new();
            let mut dropped_pending = 0u32;
            for d in steps {
                now += d;
                let (n, a) = admit(LimiterState::unpack(s.pack()), now, burst);
                prop_assert_eq!(LimiterState::unpack(n.pack()), n);
                s = n;
                match a {
                    Admit::Log { suppressed } => {
                        prop_assert_eq!(u32::from(suppressed), dropped_pending.min(u32::from(u16::MAX)));
                        dropped_pending = 0;
                        *per_window.entry(now / WINDOW_MS).or_default() += 1;
                    }
                    Admit::Drop => dropped_pending += 1,
                }
            }
            prop_assert!(per_window.values().all(|n| *n <= u32::from(burst)));
        }

        /// Endpoints print as the standard library prints socket addresses.
        #[test]
        fn endpoints_print_like_std(v6 in any::<[u8; 16]>(), v4 in any::<[u8; 4]>(), port in any::<u16>(), zeros in any::<u8>()) {
            use crate::net::addr::{Endpoint, IpAddr};
            // Zero some groups, so runs of zeros are common.
            let mut a = v6;
            for (i, pair) in a.chunks_exact_mut(2).enumerate() {
                if zeros & (1 << i) != 0 {
                    pair.fill(0);
                }
            }
            let e = Endpoint::new(IpAddr::V6(a), port);
            let want = std::net::SocketAddr::from((std::net::Ipv6Addr::from(a), port)).to_string();
            prop_assert_eq!(Ep(&e).to_string(), want);
            let e = Endpoint::new(IpAddr::V4(v4), port);
            let want = std::net::SocketAddr::from((std::net::Ipv4Addr::from(v4), port)).to_string();
            prop_assert_eq!(Ep(&e).to_string(), want);
        }

        /// The kernel's integer formatting writes what `core`'s does.
        #[test]
        fn integers_format_like_core(v in any::<i64>(), u in any::<u64>()) {
            prop_assert_eq!(Dec(v).to_string(), v.to_string());
            prop_assert_eq!(Hex(u).to_string(), format!("{u:x}"));
            prop_assert_eq!(Dec::u(u).to_string(), u.min(i64::MAX as u64).to_string());
        }

        /// The edges: zero, the most negative value, the largest hex.
        #[test]
        fn integer_edges(_x in 0..1u8) {
            prop_assert_eq!(Dec(0).to_string(), "0");
            prop_assert_eq!(Dec(i64::MIN).to_string(), i64::MIN.to_string());
            prop_assert_eq!(Hex(0).to_string(), "0");
            prop_assert_eq!(Hex(u64::MAX).to_string(), "ffffffffffffffff");
        }

        /// Any text fits: cut at a character boundary, NUL-terminated, never
        /// longer than the buffer.
        #[test]
        fn lines_are_cut_cleanly(parts in proptest::collection::vec(".{0,40}", 0..10)) {
            let mut b = LineBuf::<64>::default();
            let whole: String = parts.concat();
            for p in &parts {
                write!(b, "{p}").unwrap();
            }
            let s = b.as_str();
            prop_assert!(s.len() < 64);
            prop_assert_eq!(b.as_bytes_with_nul().last(), Some(&0u8));
            if b.was_cut() {
                prop_assert!(s.ends_with('…'));
                prop_assert!(whole.starts_with(s.trim_end_matches('…')));
            } else {
                prop_assert_eq!(s, whole.as_str());
            }
        }
    }
}

/// An integer in decimal, for log lines. Kernel code formats integers
/// through this rather than `core`'s `Display`: below full optimisation
/// (`cargo xtask build` without `--release`) `core`'s integer formatting
/// keeps a bounds check, a panic path that `kextld verify` refuses.
#[derive(Debug, Clone, Copy)]
pub struct Dec(pub i64);

impl Dec {
    /// An unsigned value (saturating at `i64::MAX`: no kernel counter gets there).
    pub fn u(v: impl TryInto<i64>) -> Self {
        Dec(v.try_into().unwrap_or(i64::MAX))
    }
}

/// An integer in lower-case hexadecimal without prefix or leading zeros
/// (`{:x}`), for log lines; see [`Dec`] for why.
#[derive(Debug, Clone, Copy)]
pub struct Hex(pub u64);

/// Writes `v` in `radix` (2..=16), most significant digit first.
fn write_radix(f: &mut fmt::Formatter<'_>, mut v: u64, radix: u64) -> fmt::Result {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 64];
    let mut start = buf.len();
    loop {
        let d = v.checked_rem(radix).unwrap_or(0);
        v = v.checked_div(radix).unwrap_or(0);
        start = start.saturating_sub(1);
        let digit = usize::try_from(d)
            .ok()
            .and_then(|d| DIGITS.get(d))
            .copied()
            .unwrap_or(b'?');
        if let Some(slot) = buf.get_mut(start) {
            *slot = digit;
        }
        if v == 0 || start == 0 {
            break;
        }
    }
    let text = buf
        .get(start..)
        .and_then(|b| core::str::from_utf8(b).ok())
        .unwrap_or("?");
    f.write_str(text)
}

impl fmt::Display for Dec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < 0 {
            f.write_str("-")?;
        }
        write_radix(f, self.0.unsigned_abs(), 10)
    }
}

impl fmt::Display for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_radix(f, self.0, 16)
    }
}

/// An endpoint as `1.2.3.4:80` or `[2001:db8::1]:443` (RFC 5952), for log
/// lines. Written here rather than with `core::net`'s `Display`, whose
/// slicing leaves panic paths in a kext (`kextld verify` refuses them).
#[derive(Debug, Clone, Copy)]
pub struct Ep<'a>(pub &'a crate::net::addr::Endpoint);

fn fmt_v4(a: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (i, b) in a.iter().enumerate() {
        if i > 0 {
            f.write_str(".")?;
        }
        write!(f, "{}", Dec::u(*b))?;
    }
    Ok(())
}

fn fmt_v6(a: &[u8; 16], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let mut g = [0u16; 8];
    for (slot, pair) in g.iter_mut().zip(a.chunks_exact(2)) {
        *slot = pair.iter().fold(0u16, |acc, b| (acc << 8) | u16::from(*b));
    }
    // IPv4-mapped: ::ffff:a.b.c.d
    if g.iter().take(5).all(|x| *x == 0) && g.get(5) == Some(&0xffff) {
        f.write_str("::ffff:")?;
        return fmt_v4(a.get(12..).unwrap_or(&[]), f);
    }
    // The longest run of two or more zero groups (the first of equals) is `::`.
    let (mut best, mut best_len, mut cur, mut cur_len) = (0usize, 0usize, 0usize, 0usize);
    for (i, x) in g.iter().enumerate() {
        if *x == 0 {
            if cur_len == 0 {
                cur = i;
            }
            cur_len = cur_len.saturating_add(1);
            if cur_len > best_len {
                best = cur;
                best_len = cur_len;
            }
        } else {
            cur_len = 0;
        }
    }
    if best_len < 2 {
        best_len = 0;
    }
    let end = best.saturating_add(best_len);
    for (i, x) in g.iter().enumerate() {
        if best_len > 0 && i >= best && i < end {
            if i == best {
                f.write_str("::")?;
            }
            continue;
        }
        if i > 0 && !(best_len > 0 && i == end) {
            f.write_str(":")?;
        }
        write!(f, "{}", Hex(u64::from(*x)))?;
    }
    Ok(())
}

impl fmt::Display for Ep<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.addr {
            crate::net::addr::IpAddr::V4(a) => fmt_v4(a, f)?,
            crate::net::addr::IpAddr::V6(a) => {
                f.write_str("[")?;
                fmt_v6(a, f)?;
                f.write_str("]")?;
            }
        }
        write!(f, ":{}", Dec::u(self.0.port))
    }
}

/// A rule number for log lines: `rule N`, or `the default` for `u32::MAX`.
#[derive(Debug, Clone, Copy)]
pub struct RuleNo(pub u32);

impl fmt::Display for RuleNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == u32::MAX {
            f.write_str("the default action")
        } else {
            write!(f, "rule {}", Dec::u(self.0))
        }
    }
}
