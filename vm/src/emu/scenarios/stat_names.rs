//! Names of the kexts' statistics counters for the emulator's reports: the
//! names `common::net::control::stat::StatName` gives (the same `prxctl status`
//! prints), so there is one table of them.

use common::net::control::stat::StatName;

/// A counter's name.
pub fn name(id: u32) -> String {
    StatName(id).to_string()
}

/// Counters as `name value; name value; …` for a report line.
pub fn render(counters: &[(u32, u64)]) -> String {
    counters
        .iter()
        .map(|(id, v)| format!("{} {v}", name(*id)))
        .collect::<Vec<_>>()
        .join("; ")
}
