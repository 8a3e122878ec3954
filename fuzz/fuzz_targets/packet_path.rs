//! The IP filter's packet path on arbitrary bytes: header views, the transport
//! walk, the output decision (rules, NAT insert, rewrite) and the input
//! decision (reverse translation), as the kext runs them on a header prefix
//! copied out of an mbuf. Nothing may panic or read out of bounds, and every
//! rewritten packet must still parse.
#![no_main]

use common::net::filter::{self, Decision, FixedPolicy};
use common::net::nat::{Config, NatTable};
use common::net::wire::ip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let mut table: NatTable<16, 32> = NatTable::new(Config::DEFAULT, 1);
    let policy = FixedPolicy::EXAMPLE;
    // The first byte chooses how much of the packet is "in the prefix".
    let n = usize::from(split).min(rest.len());
    for output in [true, false, true] {
        let mut prefix = rest[..n].to_vec();
        let d = if output {
            filter::output(&mut prefix, rest.len(), &mut table, &policy, 0)
        } else {
            filter::input(&mut prefix, rest.len(), &mut table, 0)
        };
        if let Decision::Rewritten { changed } = d {
            assert!(changed <= prefix.len());
            assert!(ip::transport_in(&prefix, rest.len()).is_ok());
        }
    }
});
