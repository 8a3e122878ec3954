//! Pure networking logic shared by the kexts and user space: no FFI, no
//! `unsafe`, no allocation (storage is the caller's), no panics — designed for
//! `-Cpanic=abort` kernel code and tested on the host (unit tests and proptest).
//! No accessor can panic on hostile input (checked constructors validate
//! lengths once; accessors fall back to zero/empty rather than index out of
//! bounds).
//!
//! - [`addr`]: IP addresses and endpoints.
//! - [`rules`]: the rule set (CIDR, ports, process; first match wins; indexed lookup).
//! - [`policy`]: the socket filter's decision (rules + never redirect the proxy).
//! - [`proxy_v2`]: the PROXY protocol v2 header.
//! - [`siphash`]: SipHash-2-4, which keys the header's authenticating TLV.
//! - [`origdst`]: the original-destination table.
//! - [`control`]: the kern_control protocol shared with `prxctl`.
//! - [`wire`]: packet views (IPv4, IPv6 and its extension headers, TCP, UDP,
//!   ICMP/ICMPv6) in the smoltcp style; checked against etherparse in tests.
//! - [`checksum`]: internet checksums, pseudo-headers, RFC 1624 updates.
//! - [`translate`]: rewriting one endpoint of a packet with incremental checksums.
//! - [`icmp_error`]: translating ICMP/ICMPv6 errors that quote a translated packet.
//! - [`nat`]: the IP filter's NAT table.
//! - [`filter`]: the IP filter's per-packet decisions.
//! - [`fastpath`]: the IP filter's one-pass path for plain TCP/UDP packets.
//! - [`kextlog`]: log levels, the log rate limiter, allocation-free log lines.

pub mod addr;
pub mod checksum;
pub mod control;
pub mod fastpath;
pub mod filter;
pub mod icmp_error;
pub mod kextlog;
pub mod nat;
pub mod origdst;
pub mod policy;
pub mod proxy_v2;
pub mod rules;
pub mod siphash;
pub mod translate;
pub mod wire;

// Property tests against etherparse and full recomputation (host only). They
// live in the crate, not in common/tests/, because an integration test links
// the library with the `kernel` feature (and its panic handler) whenever a
// workspace build includes the kexts.
#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    missing_docs
)]
mod tests;
