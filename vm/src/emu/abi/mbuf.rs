//! mbuf KPIs (to be filled in).
pub fn symbols() -> Vec<(&'static str, u64)> {
    Vec::new()
}

/// Descriptions of mbufs the kext still owns (leaks), for the end-of-run ledger.
pub fn leaked(k: &crate::emu::kernel::Kernel) -> Vec<String> {
    k.mbufs
        .all
        .values()
        .filter_map(|m| match &m.owner {
            crate::emu::mbuf::Owner::Kext { since } => Some(format!(
                "mbuf #{} ({} bytes) never freed; the kext owns it since {since}",
                m.id, m.len
            )),
            _ => None,
        })
        .collect()
}
