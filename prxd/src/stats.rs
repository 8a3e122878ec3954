//! prxd's counters: atomics, read by the status socket (`prxd status`).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($field:ident: $doc:literal),* $(,)?) => {
        /// Counters since start.
        #[derive(Debug, Default)]
        pub struct Stats {
            $(#[doc = $doc] pub $field: AtomicU64,)*
        }

        impl Stats {
            /// `(name, value)` for every counter, in a fixed order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    accepted: "Connections accepted.",
    active: "Connections open now.",
    completed: "Connections relayed and closed cleanly.",
    refused_limit: "Refused: the connection limit was reached.",
    refused_forged_header: "Refused: a PROXY v2 header the kext did not vouch for.",
    refused_bad_auth: "Refused: a PROXY v2 header whose authentication tag is wrong.",
    headers_verified: "PROXY v2 headers whose authentication tag verified (the socket filter's).",
    refused_no_destination: "Refused: no header and no kext record for the client.",
    refused_loop: "Refused: the destination is prxd itself.",
    bad_header: "Refused: a malformed PROXY v2 header.",
    header_timeout: "Timed out waiting for a complete PROXY v2 header.",
    connect_failed: "The origin or upstream could not be reached.",
    connect_timeout: "Connecting (and the upstream's handshake) timed out.",
    upstream_auth_failed: "An upstream rejected prxd's credentials.",
    upstream_failed: "An upstream refused or failed the CONNECT.",
    idle_timeout: "Closed after the idle timeout.",
    relay_error: "Closed by an I/O error while relaying.",
    lookups: "Original-destination lookups through a kext control.",
    lookup_errors: "Lookups that failed (control unreachable).",
    udp_flows: "UDP flows of the IP filter relayed (direct, one socket per flow).",
    udp_refused: "UDP datagrams dropped: no kext record, a loop, or a route through an upstream.",
    udp_idle_timeout: "UDP flows ended by the UDP idle timeout.",
    bytes_up: "Bytes from clients to destinations.",
    bytes_down: "Bytes from destinations to clients.",
    reloads: "Configuration reloads applied (SIGHUP).",
    reload_failed: "Configuration reloads refused (bad file; nothing changed).",
}

impl Stats {
    /// Adds one.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Renders the counters for people (and scripts: `name value` per line).
    pub fn render(&self) -> String {
        self.snapshot()
            .into_iter()
            .map(|(n, v)| format!("{n} {v}\n"))
            .collect()
    }
}
