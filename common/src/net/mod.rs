//! Pure networking logic shared by the kexts and user space: no FFI, no
//! `unsafe`, no allocation (storage is the caller's), no panics — designed for
//! `-Cpanic=abort` kernel code and tested on the host (unit tests and proptest).
//!
//! - [`addr`]: IP addresses and endpoints.
//! - [`rules`]: the rule set (CIDR, ports, process; first match wins; indexed lookup).
//! - [`policy`]: the socket filter's decision (rules + never redirect the proxy).
//! - [`proxy_v2`]: the PROXY protocol v2 header.
//! - [`origdst`]: the original-destination table.
//! - [`control`]: the kern_control protocol shared with `prxctl`.

pub mod addr;
pub mod control;
pub mod origdst;
pub mod policy;
pub mod proxy_v2;
pub mod rules;
