//! Socket filter, IP filter and kern_control KPIs (to be filled in).
pub fn symbols() -> Vec<(&'static str, u64)> {
    Vec::new()
}

/// Delivers one piece of deferred kernel work (a notification into the kext).
pub fn deliver(d: crate::emu::kernel::Deferred) {
    let _ = d;
}
