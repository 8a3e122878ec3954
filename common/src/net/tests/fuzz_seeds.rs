//! The control_decode fuzz target's seed corpus (`fuzz/corpus/control_decode`):
//! one valid message of every kind, as the target reads its input (first byte:
//! the option number, then the message), so fuzzing starts from inputs that reach
//! the rule-record path. This test checks the committed seeds decode as what
//! their names say; `PRX_WRITE_FUZZ_SEEDS=1` rewrites them.

use crate::net::addr::{Endpoint, IpAddr};
use crate::net::control::{self, GetRequest, Op, SetRequest, Timeouts};
use crate::net::policy::Proxies;
use crate::net::rules::{Action, Cidr, ProcName, ProcSel, Protocol, Rule};

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let rules = vec![
        Rule {
            dst: Cidr::new(IpAddr::V4([203, 0, 113, 0]), 24),
            port_lo: 80,
            port_hi: 443,
            action: Action::Proxy { proxy_v2: true },
            ..Rule::default()
        },
        Rule {
            protocol: Protocol::Tcp,
            process: ProcSel::Name(ProcName::new(b"curl")),
            exclude_process: true,
            action: Action::Block,
            ..Rule::default()
        },
        Rule {
            dst: Cidr::new(
                IpAddr::V6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                32,
            ),
            process: ProcSel::Pid(7),
            protocol: Protocol::Udp,
            ..Rule::default()
        },
    ];
    let msg = |op: Op, f: &dyn Fn(&mut [u8]) -> Result<usize, control::Error>| {
        let mut buf = vec![0u8; 4096];
        let n = f(&mut buf).unwrap();
        let mut v = vec![op as u8];
        v.extend_from_slice(&buf[..n]);
        v
    };
    let proxies = Proxies {
        v4: Some(Endpoint::new(IpAddr::V4([192, 0, 2, 1]), 3128)),
        v6: Some(Endpoint::new(
            IpAddr::V6([0x20, 1, 0xd, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            3128,
        )),
        pid: Some(42),
        name: Some(ProcName::new(b"squid")),
    };
    vec![
        (
            "set-rules-3",
            msg(Op::SetRules, &|b| {
                control::encode_rules(Action::Direct, &rules, b)
            }),
        ),
        (
            "set-rules-0",
            msg(Op::SetRules, &|b| {
                control::encode_rules(Action::Proxy { proxy_v2: false }, &[], b)
            }),
        ),
        (
            "set-proxies",
            msg(Op::SetProxies, &|b| control::encode_proxies(&proxies, b)),
        ),
        (
            "set-enabled",
            msg(Op::SetEnabled, &|b| control::encode_enabled(true, b)),
        ),
        (
            "set-timeouts",
            msg(Op::SetTimeouts, &|b| {
                control::encode_timeouts(&Timeouts::MIN, b)
            }),
        ),
        (
            "get-stats",
            msg(Op::GetStats, &|b| {
                control::encode_get(&GetRequest::Stats, b)
            }),
        ),
        (
            "get-status",
            msg(Op::GetStatus, &|b| {
                control::encode_get(&GetRequest::Status, b)
            }),
        ),
        (
            "lookup",
            msg(Op::Lookup, &|b| {
                control::encode_get(
                    &GetRequest::Lookup(Endpoint::new(IpAddr::V4([10, 0, 0, 1]), 40000)),
                    b,
                )
            }),
        ),
    ]
}

#[test]
fn the_control_decode_corpus_holds_a_valid_message_of_every_kind() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/control_decode");
    let write = std::env::var_os("PRX_WRITE_FUZZ_SEEDS").is_some();
    for (name, bytes) in seeds() {
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (run with PRX_WRITE_FUZZ_SEEDS=1)", path.display())
        });
        assert_eq!(stored, bytes, "{name}");
        // As the fuzz target reads it.
        let (opt, m) = stored.split_first().unwrap();
        let opt = i32::from(*opt % 24);
        if name.starts_with("set-") {
            let r = control::decode_set(opt, m).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            if let SetRequest::Rules(r) = r {
                let n = if name == "set-rules-3" { 3 } else { 0 };
                assert_eq!(
                    r.rules()
                        .filter(|x| x.as_ref().is_ok_and(|x| x.validate().is_ok()))
                        .count(),
                    n,
                    "{name}: reaches the rule records"
                );
            }
        } else {
            control::decode_get(opt, m).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }
}
