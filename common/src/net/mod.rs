//! Pure, `no_std` networking logic with no FFI: packet views ([`wire`]),
//! internet checksums ([`checksum`]) and the IP filter's NAT table ([`nat`]).
//!
//! Everything here is designed for use with `-Cpanic=abort` in the kernel: no
//! accessor can panic on hostile input (checked constructors validate lengths
//! once; accessors fall back to zero/empty rather than index out of bounds), no
//! allocation, no floating point. It is host-tested with proptest against
//! `etherparse` and full recomputation.

pub mod checksum;
pub mod filter;
pub mod nat;
pub mod translate;
pub mod wire;
