//! Fuzzes the PROXY v2 decoder (`common::net::proxy_v2::parse`): any bytes.
//! It must return, never panic; a decoded header must lie within the input,
//! and re-emitting its addresses and TLVs must decode to the same values.
#![no_main]

use common::net::proxy_v2::{self, Addresses, Command, Error};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match proxy_v2::parse(data) {
        Ok(p) => {
            assert!(p.len >= proxy_v2::FIXED_LEN && p.len <= data.len());
            let tlvs: Vec<_> = p.tlvs().collect();
            let _ = (p.pid(), p.process());
            if let (Command::Proxy, Addresses::Ip { src, dst }) = (p.command, p.addrs) {
                let mut out = vec![0u8; p.len + 64];
                let n = proxy_v2::emit(&src, &dst, &tlvs, &mut out).expect("room");
                let q = proxy_v2::parse(&out[..n]).expect("re-parse");
                assert_eq!(q.tlvs().collect::<Vec<_>>(), tlvs);
                if src.addr.family() == dst.addr.family() {
                    assert_eq!(q.addrs, p.addrs);
                }
            }
        }
        Err(Error::Incomplete { need }) => assert!(need > data.len()),
        Err(_) => {}
    }
});
