//! Rules that can never apply to the chosen kext: `prxctl rules check` and
//! `rules load` warn about them (the file is still valid: the other kext may
//! use it).
//!
//! - The IP filter sees packets, not processes: rules are evaluated for pid 0
//!   and an empty name (`common::net::filter::RulesPolicy`), so a `process` or
//!   `pid` selector never matches there (with `exclude = true` it matches every
//!   packet); it rewrites addresses and sends no PROXY v2 header, so
//!   `proxy-v2` acts as `proxy`.
//! - The socket filter sees TCP connections only: `protocol = "udp"` never
//!   matches there.

use common::net::rules::{Action, ProcSel, Protocol};

use crate::KextKind;
use crate::rules_file::RuleFile;

/// The 1-based line of the `n`-th (1-based) `[[rule]]` header in `src`.
fn rule_line(src: &str, n: usize) -> Option<usize> {
    src.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[rule]]"))
        .nth(n.checked_sub(1)?)
        .map(|(i, _)| i + 1)
}

/// Warnings for `f` (parsed from `src`) and the kext `kind`, each starting
/// with `LINE: ` (the rule's `[[rule]]` line; `default`'s line 1 when unknown).
pub fn warnings(kind: KextKind, f: &RuleFile, src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let default_line = src
        .lines()
        .position(|l| l.trim_start().starts_with("default"))
        .map_or(1, |i| i + 1);
    if kind == KextKind::IpFilter && f.default == (Action::Proxy { proxy_v2: true }) {
        out.push(format!(
            "{default_line}: default = \"proxy-v2\": the IP filter sends no PROXY v2 header; it acts as \"proxy\" there"
        ));
    }
    for (i, r) in f.rules.iter().enumerate() {
        let n = i + 1;
        let line = rule_line(src, n).unwrap_or(1);
        match kind {
            KextKind::IpFilter => {
                let selector = match r.process {
                    ProcSel::Any => None,
                    ProcSel::Pid(_) => Some("pid"),
                    ProcSel::Name(_) => Some("process"),
                };
                if let Some(key) = selector {
                    out.push(if r.exclude_process {
                        format!(
                            "{line}: rule {n}: the IP filter sees packets, not processes: `{key}` with `exclude = true` matches every packet"
                        )
                    } else {
                        format!(
                            "{line}: rule {n}: the IP filter sees packets, not processes: a `{key}` rule never applies there (it is for --kext socket)"
                        )
                    });
                }
                if r.action == (Action::Proxy { proxy_v2: true }) {
                    out.push(format!(
                        "{line}: rule {n}: action \"proxy-v2\": the IP filter sends no PROXY v2 header; it acts as \"proxy\" there"
                    ));
                }
            }
            KextKind::SocketFilter => {
                if r.protocol == Protocol::Udp {
                    out.push(format!(
                        "{line}: rule {n}: protocol \"udp\": the socket filter sees TCP connections only; the rule never applies there (it is for --kext ip)"
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules_file::parse;

    const SRC: &str = "default = \"proxy-v2\"\n\n[[rule]]\nprocess = \"curl\"\naction = \"proxy\"\n\n[[rule]]\nprotocol = \"udp\"\naction = \"proxy-v2\"\n\n[[rule]]\npid = 7\nexclude = true\naction = \"direct\"\n";

    #[test]
    fn each_kext_gets_its_own_warnings_with_lines() {
        let f = parse(SRC).unwrap();
        let ip = warnings(KextKind::IpFilter, &f, SRC);
        assert_eq!(ip.len(), 4, "{ip:#?}");
        assert!(ip[0].starts_with("1: default = \"proxy-v2\""), "{ip:#?}");
        assert!(
            ip[1].starts_with("3: rule 1: the IP filter sees packets, not processes: a `process` rule never applies"),
            "{ip:#?}"
        );
        assert!(
            ip[2].starts_with("7: rule 2: action \"proxy-v2\""),
            "{ip:#?}"
        );
        assert!(
            ip[3].starts_with("11: rule 3:") && ip[3].contains("matches every packet"),
            "{ip:#?}"
        );
        let sock = warnings(KextKind::SocketFilter, &f, SRC);
        assert_eq!(sock.len(), 1, "{sock:#?}");
        assert!(
            sock[0].starts_with("7: rule 2: protocol \"udp\""),
            "{sock:#?}"
        );
        let clean = parse("[[rule]]\ndst = \"10.0.0.0/8\"\naction = \"proxy\"\n").unwrap();
        assert!(warnings(KextKind::IpFilter, &clean, "").is_empty());
        assert!(warnings(KextKind::SocketFilter, &clean, "").is_empty());
    }
}
