//! Internet checksums and the checks a receiving stack applies to IPv4 packets,
//! so packets a kext corrupts are counted and reported, not silently dropped.

/// Ones'-complement sum of `data` (16-bit big-endian words) added to `init`, not folded.
pub fn sum(data: &[u8], init: u32) -> u32 {
    let mut s = init;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s = s.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [b] = chunks.remainder() {
        s = s.wrapping_add(u32::from(*b) << 8);
    }
    s
}

pub fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The internet checksum of `data` (with its checksum field zeroed by the caller).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Pseudo-header sum for IPv4 TCP/UDP.
pub fn pseudo_v4(ip: &[u8], proto: u8, l4_len: usize) -> u32 {
    let mut s = sum(&ip[12..20], 0);
    s = s.wrapping_add(u32::from(proto));
    s.wrapping_add(l4_len as u32)
}

/// Offset of the checksum field in a TCP or UDP header.
pub fn l4_csum_offset(proto: u8) -> Option<usize> {
    match proto {
        6 => Some(16),
        17 => Some(6),
        _ => None,
    }
}

/// Fills in the IPv4 header checksum.
pub fn finalize_ip(pkt: &mut [u8]) {
    if pkt.len() < 20 {
        return;
    }
    let ihl = usize::from(pkt[0] & 0xf) * 4;
    if pkt.len() < ihl {
        return;
    }
    pkt[10] = 0;
    pkt[11] = 0;
    let c = checksum(&pkt[..ihl]);
    pkt[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Where an IP packet's transport header is, found by etherparse (an
/// implementation independent of the kext's `common::net`): the emulated
/// stack's own view of a packet.
#[derive(Debug, Clone)]
pub struct Transport {
    pub src: Vec<u8>,
    pub dst: Vec<u8>,
    pub protocol: u8,
    /// Offset of the transport header from the start of the IP header.
    pub offset: usize,
    /// Transport header and payload length.
    pub len: usize,
    /// Not a fragment.
    pub whole: bool,
}

pub fn transport(p: &[u8]) -> Option<Transport> {
    let s = etherparse::SlicedPacket::from_ip(p).ok()?;
    let net = s.net.as_ref()?;
    let (src, dst) = if let Some(v4) = net.ipv4_ref() {
        (
            v4.header().source().to_vec(),
            v4.header().destination().to_vec(),
        )
    } else {
        let v6 = net.ipv6_ref()?;
        (
            v6.header().source().to_vec(),
            v6.header().destination().to_vec(),
        )
    };
    let pl = net.ip_payload_ref()?;
    let offset = (pl.payload.as_ptr() as usize).checked_sub(p.as_ptr() as usize)?;
    Some(Transport {
        src,
        dst,
        protocol: pl.ip_number.0,
        offset,
        len: pl.payload.len(),
        whole: !pl.fragmented,
    })
}

/// Where a packet's transport segment is (IPv4 or IPv6, extension headers
/// walked): (start, end, protocol, pseudo-header sum), for TCP/UDP only.
fn segment(pkt: &[u8]) -> Option<(usize, usize, u8, u64)> {
    let t = transport(pkt)?;
    if !t.whole || l4_csum_offset(t.protocol).is_none() {
        return None;
    }
    let end = t.offset.checked_add(t.len)?;
    if end > pkt.len() || t.len < 8 {
        return None;
    }
    let mut ph = u64::from(sum(&t.src, 0)) + u64::from(sum(&t.dst, 0)) + u64::from(t.protocol);
    ph += if t.src.len() == 16 {
        (t.len as u64 >> 16) + (t.len as u64 & 0xffff)
    } else {
        t.len as u64 & 0xffff
    };
    Some((t.offset, end, t.protocol, ph))
}

fn fold64(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn sum64(data: &[u8], init: u64) -> u64 {
    init + u64::from(sum(data, 0))
}

/// Completes a delayed TCP/UDP checksum (IPv4 or IPv6): the field holds the
/// pseudo-header seed (as xnu leaves it with `CSUM_DELAY_DATA`); hardware or
/// `mbuf_outbound_finalize` sums the segment starting from that seed.
pub fn finalize_l4_from_seed(pkt: &mut [u8]) {
    let Some((start, end, proto, _)) = segment(pkt) else {
        return;
    };
    let Some(co) = l4_csum_offset(proto) else {
        return;
    };
    if end < start + co + 2 {
        return;
    }
    let c = !fold64(sum64(&pkt[start..end], 0));
    let c = if c == 0 && proto == 17 { 0xffff } else { c };
    pkt[start + co..start + co + 2].copy_from_slice(&c.to_be_bytes());
}

/// Writes the pseudo-header seed into the TCP/UDP checksum field (what the stack
/// hands to filters when the checksum is delayed).
pub fn seed_l4(pkt: &mut [u8]) {
    let Some((start, _, proto, ph)) = segment(pkt) else {
        return;
    };
    let Some(co) = l4_csum_offset(proto) else {
        return;
    };
    let seed = fold64(ph);
    pkt[start + co..start + co + 2].copy_from_slice(&seed.to_be_bytes());
}

/// Fills in a complete TCP/UDP checksum (pseudo-header included).
pub fn finalize_l4(pkt: &mut [u8]) {
    let Some((start, end, proto, ph)) = segment(pkt) else {
        return;
    };
    let Some(co) = l4_csum_offset(proto) else {
        return;
    };
    pkt[start + co] = 0;
    pkt[start + co + 1] = 0;
    let c = !fold64(sum64(&pkt[start..end], ph));
    let c = if c == 0 && proto == 17 { 0xffff } else { c };
    pkt[start + co..start + co + 2].copy_from_slice(&c.to_be_bytes());
}

/// Checks a packet with an independent implementation (etherparse), as a
/// receiving stack would: it parses, the IPv4 header checksum and the TCP/UDP
/// checksum (pseudo-header included) are valid, lengths agree.
pub fn etherparse_verify(p: &[u8]) -> Result<(), String> {
    use etherparse::{SlicedPacket, TransportSlice};
    let s = SlicedPacket::from_ip(p).map_err(|e| format!("etherparse rejects the packet: {e}"))?;
    let net = s.net.as_ref().ok_or("no IP layer")?;
    let (src, dst): (Vec<u8>, Vec<u8>) = if let Some(v4) = net.ipv4_ref() {
        let h = v4.header().to_header();
        if h.calc_header_checksum() != h.header_checksum {
            return Err("bad IPv4 header checksum (etherparse)".into());
        }
        if usize::from(h.total_len) != p.len() {
            return Err(format!(
                "IPv4 total length {} but {} bytes",
                h.total_len,
                p.len()
            ));
        }
        (h.source.to_vec(), h.destination.to_vec())
    } else if let Some(v6) = net.ipv6_ref() {
        let h = v6.header();
        if 40 + usize::from(h.payload_length()) != p.len() {
            return Err(format!(
                "IPv6 payload length {} but {} bytes",
                h.payload_length(),
                p.len()
            ));
        }
        (h.source().to_vec(), h.destination().to_vec())
    } else {
        return Err("not an IP packet".into());
    };
    let a4 = |v: &[u8]| <[u8; 4]>::try_from(v).map_err(|_| "address".to_string());
    let a16 = |v: &[u8]| <[u8; 16]>::try_from(v).map_err(|_| "address".to_string());
    let v6 = src.len() == 16;
    match &s.transport {
        Some(TransportSlice::Tcp(t)) => {
            let c = if v6 {
                t.calc_checksum_ipv6(a16(&src)?, a16(&dst)?)
            } else {
                t.calc_checksum_ipv4(a4(&src)?, a4(&dst)?)
            }
            .map_err(|e| e.to_string())?;
            if c != t.checksum() {
                return Err(format!(
                    "bad TCP checksum {:#06x} (etherparse computes {c:#06x})",
                    t.checksum()
                ));
            }
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            if h.checksum == 0 && v6 {
                return Err("IPv6 UDP with checksum 0".into());
            }
            if h.checksum != 0 {
                let c = if v6 {
                    h.calc_checksum_ipv6_raw(a16(&src)?, a16(&dst)?, u.payload())
                } else {
                    h.calc_checksum_ipv4_raw(a4(&src)?, a4(&dst)?, u.payload())
                }
                .map_err(|e| e.to_string())?;
                if c != h.checksum {
                    return Err(format!(
                        "bad UDP checksum {:#06x} (etherparse computes {c:#06x})",
                        h.checksum
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// What a receiving IPv4 stack checks; `Err` says why it would drop the packet.
pub fn validate_v4(pkt: &[u8]) -> Result<(), String> {
    if pkt.len() < 20 {
        return Err(format!("{} bytes: shorter than an IPv4 header", pkt.len()));
    }
    if pkt[0] >> 4 != 4 {
        return Err(format!("IP version {}", pkt[0] >> 4));
    }
    let ihl = usize::from(pkt[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if ihl < 20 || total < ihl || total != pkt.len() {
        return Err(format!(
            "bad length: header {ihl}, total_length {total}, packet {} bytes",
            pkt.len()
        ));
    }
    if fold(sum(&pkt[..ihl], 0)) != 0xffff {
        return Err("bad IPv4 header checksum".into());
    }
    let proto = pkt[9];
    if let Some(co) = l4_csum_offset(proto) {
        if pkt.len() < ihl + co + 2 {
            return Err("truncated TCP/UDP header".into());
        }
        let stored = u16::from_be_bytes([pkt[ihl + co], pkt[ihl + co + 1]]);
        if !(proto == 17 && stored == 0)
            && fold(sum(&pkt[ihl..], pseudo_v4(pkt, proto, pkt.len() - ihl))) != 0xffff
        {
            return Err(format!(
                "bad {} checksum",
                if proto == 6 { "TCP" } else { "UDP" }
            ));
        }
    }
    Ok(())
}

/// Builds an IPv4 TCP segment with correct checksums.
#[allow(clippy::too_many_arguments)] // the fields of a TCP segment, in header order
pub fn tcp_v4(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let total = 40 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&ack.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = flags;
    p[34..36].copy_from_slice(&65535u16.to_be_bytes());
    p[40..].copy_from_slice(payload);
    finalize_ip(&mut p);
    finalize_l4(&mut p);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_segments_validate_and_corruption_is_named() {
        let mut p = tcp_v4([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80, 1, 0, 0x02, b"hi");
        assert_eq!(validate_v4(&p), Ok(()));
        p[16] = 9; // rewrite the destination without fixing checksums
        assert_eq!(validate_v4(&p).unwrap_err(), "bad IPv4 header checksum");
        finalize_ip(&mut p);
        assert_eq!(validate_v4(&p).unwrap_err(), "bad TCP checksum");
    }

    #[test]
    fn delayed_checksum_completes_from_the_seed() {
        let mut p = tcp_v4([10, 0, 0, 1], 40000, [10, 0, 0, 2], 80, 1, 0, 0x02, b"abc");
        let good = p.clone();
        seed_l4(&mut p);
        assert_ne!(p, good);
        finalize_l4_from_seed(&mut p);
        assert_eq!(p, good);
    }
}
