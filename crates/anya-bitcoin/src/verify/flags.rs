//! anya's script verification flags and their mapping onto libbitcoinkernel's.

use core::fmt;
use core::ops::{BitOr, BitOrAssign};

/// A set of consensus script verification rules, as Bitcoin Core names them
/// (`SCRIPT_VERIFY_*` in `src/script/interpreter.h`).
///
/// Only the rules that libbitcoinkernel's script API accepts are representable: the consensus
/// ones. Core's policy-only rules (`STRICTENC`, `LOW_S`, `MINIMALDATA`, `CLEANSTACK`,
/// `NULLFAIL`, `DISCOURAGE_*` …) are not exposed by `btck_script_pubkey_verify`, so anya does not
/// pretend to offer them.
///
/// The bits are anya's own; [`VerifyFlags::to_kernel`] maps each one to the kernel constant by
/// name, so a renumbering on either side cannot silently change meaning.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VerifyFlags(u32);

impl VerifyFlags {
    /// No rule beyond the base interpreter.
    pub const NONE: Self = Self(0);
    /// BIP 16: evaluate P2SH redeem scripts.
    pub const P2SH: Self = Self(1 << 0);
    /// BIP 66: strict DER signatures.
    pub const DERSIG: Self = Self(1 << 1);
    /// BIP 147: the `CHECKMULTISIG` dummy element must be empty.
    pub const NULLDUMMY: Self = Self(1 << 2);
    /// BIP 65: `OP_CHECKLOCKTIMEVERIFY`.
    pub const CHECKLOCKTIMEVERIFY: Self = Self(1 << 3);
    /// BIP 112: `OP_CHECKSEQUENCEVERIFY`.
    pub const CHECKSEQUENCEVERIFY: Self = Self(1 << 4);
    /// BIP 141/143: segregated witness (requires [`VerifyFlags::P2SH`]).
    pub const WITNESS: Self = Self(1 << 5);
    /// BIP 341/342: Taproot and Tapscript.
    pub const TAPROOT: Self = Self(1 << 6);

    const ALL_BITS: u32 = (1 << 7) - 1;

    const NAMES: [(Self, &'static str); 7] = [
        (Self::P2SH, "P2SH"),
        (Self::DERSIG, "DERSIG"),
        (Self::NULLDUMMY, "NULLDUMMY"),
        (Self::CHECKLOCKTIMEVERIFY, "CHECKLOCKTIMEVERIFY"),
        (Self::CHECKSEQUENCEVERIFY, "CHECKSEQUENCEVERIFY"),
        (Self::WITNESS, "WITNESS"),
        (Self::TAPROOT, "TAPROOT"),
    ];

    /// Every consensus rule in force on mainnet today, Taproot included
    /// (libbitcoinkernel's `VERIFY_ALL`).
    pub const fn consensus() -> Self {
        Self(Self::ALL_BITS)
    }

    /// Every consensus rule except Taproot (for blocks before its activation).
    pub const fn pre_taproot() -> Self {
        Self(Self::ALL_BITS & !Self::TAPROOT.0)
    }

    /// The flags from raw bits; bits that name no rule are dropped.
    pub const fn from_bits_truncate(bits: u32) -> Self {
        Self(bits & Self::ALL_BITS)
    }

    /// The raw bits (anya's numbering, not Core's).
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every rule in `other` is also in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no rule is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The same set with the rules of `other` removed.
    #[must_use]
    pub const fn difference(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// The libbitcoinkernel flag word for this set.
    pub fn to_kernel(self) -> bitcoinkernel::ScriptVerificationFlags {
        use bitcoinkernel as k;
        let table = [
            (Self::P2SH, k::VERIFY_P2SH),
            (Self::DERSIG, k::VERIFY_DERSIG),
            (Self::NULLDUMMY, k::VERIFY_NULLDUMMY),
            (Self::CHECKLOCKTIMEVERIFY, k::VERIFY_CHECKLOCKTIMEVERIFY),
            (Self::CHECKSEQUENCEVERIFY, k::VERIFY_CHECKSEQUENCEVERIFY),
            (Self::WITNESS, k::VERIFY_WITNESS),
            (Self::TAPROOT, k::VERIFY_TAPROOT),
        ];
        table
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .fold(k::VERIFY_NONE, |acc, (_, kernel)| acc | kernel)
    }
}

impl BitOr for VerifyFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl BitOrAssign for VerifyFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for VerifyFlags {
    /// Core's spelling: names joined by commas, `NONE` for the empty set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("NONE");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for VerifyFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyFlags({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::VerifyFlags;

    #[test]
    fn consensus_maps_to_kernel_all() {
        assert_eq!(VerifyFlags::consensus().to_kernel(), bitcoinkernel::VERIFY_ALL);
        assert_eq!(
            VerifyFlags::pre_taproot().to_kernel(),
            bitcoinkernel::VERIFY_ALL_PRE_TAPROOT
        );
        assert_eq!(VerifyFlags::NONE.to_kernel(), bitcoinkernel::VERIFY_NONE);
    }

    #[test]
    fn display_uses_core_names() {
        assert_eq!(VerifyFlags::NONE.to_string(), "NONE");
        assert_eq!((VerifyFlags::P2SH | VerifyFlags::WITNESS).to_string(), "P2SH,WITNESS");
    }
}
