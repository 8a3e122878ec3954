//! Fuzzes prxctl's rules file reader (`prxctl::rules_file::parse`): any text
//! gives rules or an error, never a panic; what parses encodes as the kexts'
//! `SetRules` message, which decodes back to the same, valid rules.
#![no_main]

use common::net::control;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(f) = prxctl::rules_file::parse(text) else {
        return;
    };
    let Some(len) = control::rules_len(f.rules.len()) else {
        return;
    };
    let mut buf = vec![0u8; len];
    let Ok(n) = control::encode_rules(f.default, &f.rules, &mut buf) else {
        return;
    };
    let Ok(control::SetRequest::Rules(m)) =
        control::decode_set(control::Op::SetRules as i32, &buf[..n])
    else {
        panic!("an encoded rule file does not decode");
    };
    let back: Vec<_> = m.rules().collect();
    assert_eq!(back.len(), f.rules.len());
    for (r, want) in back.into_iter().zip(&f.rules) {
        let r = r.expect("a decoded rule is valid");
        assert_eq!(&r, want);
    }
});
