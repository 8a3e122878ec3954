//! Fuzzes every decoder of the control protocol (`common::net::control`): any
//! bytes, any option number. A decoder must return, never panic; a message that
//! decodes as `SetRules` must yield only valid rules.
#![no_main]

use common::net::control;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&opt, msg)) = data.split_first() else {
        return;
    };
    let opt = i32::from(opt % 24);
    if let Ok(control::SetRequest::Rules(m)) = control::decode_set(opt, msg) {
        for r in m.rules() {
            assert!(r.is_ok_and(|r| r.validate().is_ok()));
        }
    }
    let _ = control::decode_get(opt, msg);
    let _ = control::decode_status(msg);
    let _ = control::decode_lookup_response(msg);
    let _ = control::decode_stats(msg, |_, _| {});
    if let Ok(m) = control::decode_rules_response(msg) {
        for r in m.rules() {
            assert!(r.is_ok_and(|r| r.validate().is_ok()));
        }
    }
});
