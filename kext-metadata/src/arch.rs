//! Target architectures and minimum OS versions.

use std::fmt;
use std::str::FromStr;

/// A kext slice architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    /// Intel Macs: `CPU_TYPE_X86_64`, subtype 3.
    X86_64,
    /// Apple silicon: `CPU_TYPE_ARM64`, subtype `0xC0000002` (arm64e, kernel ABI).
    Arm64e,
}

impl Arch {
    /// Every supported architecture, in universal-binary order.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64e];

    /// The name used on command lines, in target specs and by `lipo`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64e => "arm64e",
        }
    }

    /// Segment alignment (page size) of the linked kext.
    pub fn page_size(self) -> u64 {
        match self {
            Arch::X86_64 => 0x1000,
            Arch::Arm64e => 0x4000,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Arch, String> {
        match s {
            "x86_64" => Ok(Arch::X86_64),
            "arm64e" => Ok(Arch::Arm64e),
            other => Err(format!(
                "unknown architecture {other:?} (expected x86_64 or arm64e)"
            )),
        }
    }
}

/// A minimum macOS version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MinOs {
    /// 10, 11, 12, ...
    pub major: u32,
    /// 13 in 10.13.
    pub minor: u32,
}

impl MinOs {
    /// macOS 10.13, the default for x86_64.
    pub const X86_64_DEFAULT: MinOs = MinOs {
        major: 10,
        minor: 13,
    };
    /// macOS 11.0, the default (and the minimum) for arm64e.
    pub const ARM64E_DEFAULT: MinOs = MinOs {
        major: 11,
        minor: 0,
    };

    /// The default minimum for an architecture.
    pub fn default_for(arch: Arch) -> MinOs {
        match arch {
            Arch::X86_64 => MinOs::X86_64_DEFAULT,
            Arch::Arm64e => MinOs::ARM64E_DEFAULT,
        }
    }

    /// The Darwin major version of this release (10.13 → 17, 11 → 20, 12 → 21):
    /// the version kexts built for it declare for their KPI libraries.
    pub fn darwin_major(self) -> u32 {
        if self.major == 10 {
            self.minor + 4
        } else {
            self.major + 9
        }
    }
}

impl fmt::Display for MinOs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for MinOs {
    type Err = String;
    fn from_str(s: &str) -> Result<MinOs, String> {
        let bad = || format!("bad macOS version {s:?} (expected e.g. 10.13 or 11.0)");
        let mut it = s.split('.');
        let major: u32 = it.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor: u32 = match it.next() {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => 0,
        };
        if it.next().is_some() || !(10..=99).contains(&major) || (major == 10 && minor < 6) {
            return Err(bad());
        }
        Ok(MinOs { major, minor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_darwin() {
        assert_eq!("10.13".parse::<MinOs>().unwrap().darwin_major(), 17);
        assert_eq!("11".parse::<MinOs>().unwrap().darwin_major(), 20);
        assert_eq!("12.0".parse::<MinOs>().unwrap().darwin_major(), 21);
        assert!("10".parse::<MinOs>().is_err());
        assert!("ten".parse::<MinOs>().is_err());
        assert_eq!("arm64e".parse::<Arch>().unwrap(), Arch::Arm64e);
        assert!("ppc".parse::<Arch>().is_err());
    }
}
