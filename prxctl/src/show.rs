//! `prxctl rules show`: the kext's installed rules, read back through the
//! control (`GetRules`), printed as a rule file that `prxctl rules load`
//! accepts unchanged (see [`crate::rules_file`]).

use std::fmt::Write as _;
use std::io;

use common::net::control;
use common::net::rules::{Action, ProcSel, Protocol, Rule};

use crate::rules_file::RuleFile;
use crate::transport::Transport;

/// Reads the installed rule set. The buffer is sized from the status's rule
/// count; if the set grew in between, once more at the largest size.
pub fn read_rules(t: &mut dyn Transport) -> io::Result<RuleFile> {
    let count = crate::status(t)?.rules as usize;
    let max = control::rules_len(common::net::rules::MAX_RULES).unwrap_or(1 << 20);
    let first = control::rules_len(count).unwrap_or(max).min(max);
    for size in [first, max] {
        let mut buf = vec![0u8; size];
        control::encode_get(&control::GetRequest::Rules, &mut buf)
            .map_err(|e| proto_err(format!("{e:?}")))?;
        let n = match t.getopt(control::Op::GetRules as i32, &mut buf) {
            Ok(n) => n,
            // EMSGSIZE: the set grew since the status was read.
            Err(e) if e.raw_os_error() == Some(40) && size < max => continue,
            Err(e) => return Err(e),
        };
        let msg = control::decode_rules_response(buf.get(..n).unwrap_or(&[]))
            .map_err(|e| proto_err(format!("the kext's rules: {e:?}")))?;
        let rules = msg
            .rules()
            .collect::<Result<Vec<Rule>, _>>()
            .map_err(|e| proto_err(format!("the kext's rules: {e:?}")))?;
        return Ok(RuleFile {
            default: msg.default_action(),
            rules,
        });
    }
    Err(proto_err("the rule set keeps growing; try again".into()))
}

fn proto_err(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("control protocol: {m}"))
}

fn action(a: Action) -> &'static str {
    match a {
        Action::Direct => "direct",
        Action::Proxy { proxy_v2: false } => "proxy",
        Action::Proxy { proxy_v2: true } => "proxy-v2",
        Action::Block => "block",
    }
}

/// A TOML basic string (quotes and escapes as TOML needs them).
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `f` as rule-file text, `comment` (one or more lines) on top as `#` lines.
pub fn render_rule_file(f: &RuleFile, comment: &str) -> String {
    let mut o = String::new();
    for l in comment.lines() {
        let _ = writeln!(o, "# {l}");
    }
    let _ = writeln!(o, "default = {}", quoted(action(f.default)));
    for r in &f.rules {
        let _ = writeln!(o, "\n[[rule]]");
        match r.protocol {
            Protocol::Any => {}
            Protocol::Tcp => {
                let _ = writeln!(o, "protocol = \"tcp\"");
            }
            Protocol::Udp => {
                let _ = writeln!(o, "protocol = \"udp\"");
            }
        }
        if let Some(c) = &r.dst {
            let ip = crate::socket_addr(&common::net::addr::Endpoint::new(c.addr, 0)).ip();
            let _ = writeln!(o, "dst = {}", quoted(&format!("{ip}/{}", c.prefix)));
        }
        if (r.port_lo, r.port_hi) != (0, u16::MAX) {
            let ports = if r.port_lo == r.port_hi {
                r.port_lo.to_string()
            } else {
                format!("{}-{}", r.port_lo, r.port_hi)
            };
            let _ = writeln!(o, "ports = {}", quoted(&ports));
        }
        match r.process {
            ProcSel::Any => {}
            ProcSel::Pid(p) => {
                let _ = writeln!(o, "pid = {p}");
            }
            ProcSel::Name(n) => {
                let _ = writeln!(
                    o,
                    "process = {}",
                    quoted(&String::from_utf8_lossy(n.as_bytes()))
                );
            }
        }
        if r.exclude_process {
            let _ = writeln!(o, "exclude = true");
        }
        let _ = writeln!(o, "action = {}", quoted(action(r.action)));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules_file::parse;

    #[test]
    fn every_kind_of_rule_renders_to_a_file_that_parses_back_equal() {
        let src = r#"
default = "proxy-v2"

[[rule]]
protocol = "tcp"
dst = "203.0.113.0/24"
ports = "80-443"
action = "proxy"

[[rule]]
protocol = "udp"
dst = "2001:db8::1"
ports = 53
action = "block"

[[rule]]
process = "we \"quote\""
exclude = true
action = "direct"

[[rule]]
pid = 4242
dst = "0.0.0.0/0"
action = "proxy-v2"
"#;
        let f = parse(src).unwrap();
        let text = render_rule_file(&f, "rules of a test\nsecond line");
        assert!(
            text.starts_with("# rules of a test\n# second line\n"),
            "{text}"
        );
        assert!(text.contains("dst = \"2001:db8::1/128\""), "{text}");
        assert_eq!(parse(&text).unwrap(), f, "{text}");
        let empty = RuleFile {
            default: Action::Direct,
            rules: vec![],
        };
        assert_eq!(parse(&render_rule_file(&empty, "")).unwrap(), empty);
    }
}
