//! SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input PRF",
//! 2012): the keyed hash behind the PROXY v2 header's authenticating TLV
//! ([`super::proxy_v2::TLV_AUTH`]). `no_std`, no allocation, no panics, only
//! wrapping integer arithmetic (kernel code). Written here rather than taken
//! from a crate: `common` has no dependencies (it is linked into the kexts by
//! prx's own linker), and the function is 40 lines; it is checked against the
//! paper's test vector and against Rust's `std::hash::SipHasher` (the same
//! function) on random inputs.

/// SipHash-2-4 of `msg` under the 128-bit `key` (k0 = bytes 0..8, k1 = 8..16,
/// little-endian, as in the paper).
pub fn siphash24(key: &[u8; 16], msg: &[u8]) -> u64 {
    let (k0, k1) = key.split_at(8);
    let k0 = u64::from_le_bytes(k0.try_into().unwrap_or([0; 8]));
    let k1 = u64::from_le_bytes(k1.try_into().unwrap_or([0; 8]));
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = msg.chunks_exact(8);
    for c in &mut chunks {
        let m = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        v[3] ^= m;
        round(&mut v);
        round(&mut v);
        v[0] ^= m;
    }
    let mut last = [0u8; 8];
    for (d, s) in last.iter_mut().zip(chunks.remainder()) {
        *d = *s;
    }
    // The length's low byte goes in the last word's top byte.
    last[7] = msg.len().to_le_bytes().first().copied().unwrap_or(0);
    let m = u64::from_le_bytes(last);
    v[3] ^= m;
    round(&mut v);
    round(&mut v);
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    let [mut v0, mut v1, mut v2, mut v3] = *v;
    v0 = v0.wrapping_add(v1);
    v1 = v1.rotate_left(13);
    v1 ^= v0;
    v0 = v0.rotate_left(32);
    v2 = v2.wrapping_add(v3);
    v3 = v3.rotate_left(16);
    v3 ^= v2;
    v0 = v0.wrapping_add(v3);
    v3 = v3.rotate_left(21);
    v3 ^= v0;
    v2 = v2.wrapping_add(v1);
    v1 = v1.rotate_left(17);
    v1 ^= v2;
    v2 = v2.rotate_left(32);
    *v = [v0, v1, v2, v3];
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    reason = "host tests"
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The paper's appendix A: key 00..0f, message 00..0e.
    #[test]
    fn the_papers_test_vector() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let msg: [u8; 15] = core::array::from_fn(|i| i as u8);
        assert_eq!(siphash24(&key, &msg), 0xa129_ca61_49be_45e5);
    }

    #[allow(
        deprecated,
        reason = "std's SipHasher is SipHash-2-4: an independent implementation"
    )]
    fn std_siphash(key: &[u8; 16], msg: &[u8]) -> u64 {
        use core::hash::Hasher;
        let k0 = u64::from_le_bytes(key[..8].try_into().unwrap());
        let k1 = u64::from_le_bytes(key[8..].try_into().unwrap());
        let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
        h.write(msg);
        h.finish()
    }

    proptest! {
        #[test]
        fn agrees_with_std(key in any::<[u8; 16]>(), msg in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(siphash24(&key, &msg), std_siphash(&key, &msg));
        }
    }
}
