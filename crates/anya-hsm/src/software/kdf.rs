//! The key-encryption key: Argon2id over the passphrase.

use crate::software::seal::Kek;
use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroizing;

use crate::HsmError;

/// Largest memory cost accepted from a stored keystore header (4 GiB), so that a tampered header
/// cannot make unlocking exhaust the host.
const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 16;

/// Argon2id cost parameters, stored with the keystore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane.
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// Custom parameters, validated by Argon2 and against the accepted maximum.
    pub fn new(memory_kib: u32, iterations: u32, parallelism: u32) -> Result<Self, HsmError> {
        let p = Self {
            memory_kib,
            iterations,
            parallelism,
        };
        p.argon2_params()?;
        Ok(p)
    }

    /// Very cheap parameters (64 KiB, 1 pass) for tests only: a keystore sealed with them falls
    /// to an offline guessing attack quickly.
    pub fn insecure_for_tests() -> Self {
        Self {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    /// The default ceiling on parameters read from a keystore header: four times the default
    /// work (256 MiB, 12 passes, 4 lanes).
    pub fn default_ceiling() -> Self {
        let d = Self::default();
        Self {
            memory_kib: d.memory_kib * 4,
            iterations: d.iterations * 4,
            parallelism: 4,
        }
    }

    /// Whether every cost of these parameters is at most `ceiling`'s.
    pub fn within(&self, ceiling: &KdfParams) -> bool {
        self.memory_kib <= ceiling.memory_kib
            && self.iterations <= ceiling.iterations
            && self.parallelism <= ceiling.parallelism
    }

    /// [`HsmError::KdfAboveCeiling`] unless these parameters are [`within`](Self::within)
    /// `ceiling`.
    pub(crate) fn check_ceiling(&self, ceiling: &KdfParams) -> Result<(), HsmError> {
        if self.within(ceiling) {
            Ok(())
        } else {
            Err(HsmError::KdfAboveCeiling {
                stored: *self,
                ceiling: *ceiling,
            })
        }
    }

    /// Memory in KiB.
    pub fn memory_kib(&self) -> u32 {
        self.memory_kib
    }

    /// Passes.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Lanes.
    pub fn parallelism(&self) -> u32 {
        self.parallelism
    }

    fn invalid(&self) -> HsmError {
        HsmError::InvalidKdfParams {
            memory_kib: self.memory_kib,
            iterations: self.iterations,
            parallelism: self.parallelism,
        }
    }

    fn argon2_params(&self) -> Result<Params, HsmError> {
        if self.memory_kib > MAX_MEMORY_KIB || self.iterations > MAX_ITERATIONS || self.parallelism > MAX_PARALLELISM {
            return Err(self.invalid());
        }
        Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32)).map_err(|_| self.invalid())
    }

    pub(crate) fn encode(&self) -> [u8; 12] {
        let mut out = [0; 12];
        out[..4].copy_from_slice(&self.memory_kib.to_be_bytes());
        out[4..8].copy_from_slice(&self.iterations.to_be_bytes());
        out[8..].copy_from_slice(&self.parallelism.to_be_bytes());
        out
    }

    pub(crate) fn decode(b: &[u8; 12]) -> Self {
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            memory_kib: word(0),
            iterations: word(4),
            parallelism: word(8),
        }
    }

    /// Derives the AES-256-GCM key-encryption key from `passphrase` and `salt`.
    pub(crate) fn derive_kek(&self, passphrase: &[u8], salt: &[u8]) -> Result<Kek, HsmError> {
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, self.argon2_params()?);
        let mut kek = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, salt, kek.as_mut())
            .map_err(|source| HsmError::Kdf { source })?;
        Kek::from_bytes(&kek)
    }
}
