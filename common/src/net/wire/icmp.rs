//! ICMP (RFC 792) and ICMPv6 (RFC 4443) message headers: both share the
//! type/code/checksum layout and the echo identifier/sequence fields. ICMPv6's
//! checksum covers a pseudo-header, ICMP's does not.

use super::{Error, Field, get_u8, get_u16, set_u16};

mod field {
    use super::Field;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQ: Field = 6..8;
}

/// Header length (type, code, checksum, 4 bytes of rest-of-header).
pub const HEADER_LEN: usize = 8;
/// Offset of the checksum field.
pub const CHECKSUM_OFFSET: usize = 2;

/// ICMP echo request.
pub const V4_ECHO_REQUEST: u8 = 8;
/// ICMP echo reply.
pub const V4_ECHO_REPLY: u8 = 0;
/// ICMPv6 echo request.
pub const V6_ECHO_REQUEST: u8 = 128;
/// ICMPv6 echo reply.
pub const V6_ECHO_REPLY: u8 = 129;

/// ICMP destination unreachable (fragmentation needed is its code 4).
pub const V4_DEST_UNREACHABLE: u8 = 3;
/// ICMP time exceeded.
pub const V4_TIME_EXCEEDED: u8 = 11;
/// ICMP parameter problem.
pub const V4_PARAMETER_PROBLEM: u8 = 12;
/// ICMPv6 destination unreachable.
pub const V6_DEST_UNREACHABLE: u8 = 1;
/// ICMPv6 packet too big.
pub const V6_PACKET_TOO_BIG: u8 = 2;
/// ICMPv6 time exceeded.
pub const V6_TIME_EXCEEDED: u8 = 3;
/// ICMPv6 parameter problem.
pub const V6_PARAMETER_PROBLEM: u8 = 4;

/// True for the error messages that quote the offending packet after their
/// 8-byte header: ICMP types 3, 11, 12 (`v6` false) and ICMPv6 types 1-4.
pub fn is_error(v6: bool, msg_type: u8) -> bool {
    if v6 {
        matches!(
            msg_type,
            V6_DEST_UNREACHABLE | V6_PACKET_TOO_BIG | V6_TIME_EXCEEDED | V6_PARAMETER_PROBLEM
        )
    } else {
        matches!(
            msg_type,
            V4_DEST_UNREACHABLE | V4_TIME_EXCEEDED | V4_PARAMETER_PROBLEM
        )
    }
}

/// A view of an ICMP or ICMPv6 message in `buffer`.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// A view after checking that the 8-byte header is there.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Packet { buffer })
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::TYPE)
    }

    /// Message code.
    pub fn code(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::CODE)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier (meaningful for echo request/reply).
    pub fn echo_ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Echo sequence number.
    pub fn echo_seq(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_SEQ)
    }

    /// The data after the 8-byte header.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(HEADER_LEN..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }
}
