//! Fuzzes kextld's Mach-O input (`kextld::link::link_buffers`): any bytes as
//! an object file or static archive, for either architecture, give a linked
//! image or an error, never a panic. The first byte picks the architecture and
//! whether the input is also given as a second member.
#![no_main]

use kextld::{Arch, MinOs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let arch = if sel & 1 == 0 {
        Arch::X86_64
    } else {
        Arch::Arm64e
    };
    let mut inputs = vec![("fuzz.o".to_string(), rest.to_vec())];
    if sel & 2 != 0 {
        inputs.push(("fuzz2.o".to_string(), rest.to_vec()));
    }
    if let Ok(linked) = kextld::link::link_buffers(arch, MinOs::default_for(arch), 0, &inputs) {
        // Whatever links must at least be read back by the verifier.
        let _ = kextld::verify::verify(&linked.bytes, kextld::kpi::KpiTables::builtin());
    }
});
