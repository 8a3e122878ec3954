//! Fuzzes kextld's verifier (`kextld::verify::verify`): any bytes — thin
//! Mach-O, universal file or garbage — give a report, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tables = kextld::kpi::KpiTables::builtin();
    let report = kextld::verify::verify(data, tables);
    let _ = format!("{report:?}");
});
