//! Sealed records: AES-256-GCM under the key-encryption key, with the record's identity and
//! header bound as associated data.
//!
//! Layout of a sealed key entry (the store key is the key id):
//!
//! ```text
//! "AHK" 0x01 | spec u8 | usage u16 | exportable u8 | created secs u64 | nanos u32 | nonce[12] | ciphertext | tag[16]
//! ```
//!
//! The associated data is `"anya-hsm/key/v1" ‖ len(id) ‖ id ‖ header`, so an entry copied under
//! another id, or with its spec or policy edited, fails authentication.

use anya_core_types::UnixTime;
use ring::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::SealedDefect;
use crate::key::{KeyPolicy, KeySpec, UsageSet};
use crate::software::kdf::KdfParams;
use crate::HsmError;

const TAG_LEN: usize = 16;
const ENTRY_MAGIC: &[u8; 4] = b"AHK\x01";
const ENTRY_HEADER_LEN: usize = 4 + 1 + 2 + 1 + 8 + 4;
const ENTRY_AAD_DOMAIN: &[u8] = b"anya-hsm/key/v1";
const META_MAGIC: &[u8; 4] = b"AHS\x01";
const META_HEADER_LEN: usize = 4 + 12 + 16;
const VERIFIER_AAD_DOMAIN: &[u8] = b"anya-hsm/verifier/v1";
/// The known value sealed in the keystore header to recognise the right passphrase.
const VERIFIER_PLAINTEXT: [u8; 32] = [0u8; 32];

/// The store key of the keystore header.
pub(crate) const META_KEY: &[u8] = b"keystore";

pub(crate) fn random<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], HsmError> {
    let mut out = [0u8; N];
    rng.fill(&mut out).map_err(|_| HsmError::Random)?;
    Ok(out)
}

/// `nonce ‖ ciphertext ‖ tag` of `plaintext` under `key` with `aad`.
pub(crate) fn seal(key: &LessSafeKey, rng: &SystemRandom, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
    let nonce_bytes: [u8; NONCE_LEN] = random(rng)?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| HsmError::Crypto { what: "aes-gcm seal" })?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Opens what [`seal`] produced.
pub(crate) fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealedDefect> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(SealedDefect::Truncated);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealedDefect::Truncated)?;
    let mut buf = Zeroizing::new(rest.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), buf.as_mut_slice())
        .map_err(|_| SealedDefect::AuthenticationFailed)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// The public part of a key entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryHeader {
    pub(crate) spec: KeySpec,
    pub(crate) policy: KeyPolicy,
    pub(crate) created: UnixTime,
}

impl EntryHeader {
    fn encode(&self) -> [u8; ENTRY_HEADER_LEN] {
        let mut out = [0u8; ENTRY_HEADER_LEN];
        out[..4].copy_from_slice(ENTRY_MAGIC);
        out[4] = self.spec.code();
        out[5..7].copy_from_slice(&self.policy.allowed.bits().to_be_bytes());
        out[7] = u8::from(self.policy.exportable);
        let d = self.created.as_duration();
        out[8..16].copy_from_slice(&d.as_secs().to_be_bytes());
        out[16..20].copy_from_slice(&d.subsec_nanos().to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Result<Self, SealedDefect> {
        if b.len() < ENTRY_HEADER_LEN {
            return Err(SealedDefect::Truncated);
        }
        if &b[..4] != ENTRY_MAGIC {
            return Err(SealedDefect::UnknownFormat);
        }
        let spec = KeySpec::from_code(b[4]).ok_or(SealedDefect::BadHeader)?;
        let allowed = UsageSet::from_bits(u16::from_be_bytes([b[5], b[6]])).ok_or(SealedDefect::BadHeader)?;
        let exportable = match b[7] {
            0 => false,
            1 => true,
            _ => return Err(SealedDefect::BadHeader),
        };
        let secs = u64::from_be_bytes(b[8..16].try_into().expect("8-byte slice"));
        let nanos = u32::from_be_bytes(b[16..20].try_into().expect("4-byte slice"));
        if nanos >= 1_000_000_000 {
            return Err(SealedDefect::BadHeader);
        }
        Ok(Self {
            spec,
            policy: KeyPolicy { allowed, exportable },
            created: UnixTime::from_duration(std::time::Duration::new(secs, nanos)),
        })
    }
}

fn entry_aad(id: &str, header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(ENTRY_AAD_DOMAIN.len() + 1 + id.len() + header.len());
    aad.extend_from_slice(ENTRY_AAD_DOMAIN);
    aad.push(u8::try_from(id.len()).expect("labels are at most 64 bytes"));
    aad.extend_from_slice(id.as_bytes());
    aad.extend_from_slice(header);
    aad
}

/// A sealed key entry for `id`.
pub(crate) fn seal_entry(
    kek: &LessSafeKey,
    rng: &SystemRandom,
    id: &str,
    header: &EntryHeader,
    secret: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let head = header.encode();
    let sealed = seal(kek, rng, &entry_aad(id, &head), secret)?;
    let mut out = Vec::with_capacity(head.len() + sealed.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a key entry stored under `id`.
pub(crate) fn open_entry(
    kek: &LessSafeKey,
    id: &str,
    bytes: &[u8],
) -> Result<(EntryHeader, Zeroizing<Vec<u8>>), SealedDefect> {
    let header = EntryHeader::decode(bytes)?;
    let (head, sealed) = bytes.split_at(ENTRY_HEADER_LEN);
    let secret = open(kek, &entry_aad(id, head), sealed)?;
    Ok((header, secret))
}

/// The keystore header: KDF parameters, salt and the sealed verifier.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub(crate) params: KdfParams,
    pub(crate) salt: [u8; 16],
    verifier: Vec<u8>,
}

impl Meta {
    /// A new header for `kek` (derived with `params` and `salt`).
    pub(crate) fn new(
        kek: &LessSafeKey,
        rng: &SystemRandom,
        params: KdfParams,
        salt: [u8; 16],
    ) -> Result<Self, HsmError> {
        let mut meta = Self {
            params,
            salt,
            verifier: Vec::new(),
        };
        meta.verifier = seal(kek, rng, &meta.verifier_aad(), &VERIFIER_PLAINTEXT)?;
        Ok(meta)
    }

    fn header(&self) -> [u8; META_HEADER_LEN] {
        let mut out = [0u8; META_HEADER_LEN];
        out[..4].copy_from_slice(META_MAGIC);
        out[4..16].copy_from_slice(&self.params.encode());
        out[16..].copy_from_slice(&self.salt);
        out
    }

    fn verifier_aad(&self) -> Vec<u8> {
        let mut aad = VERIFIER_AAD_DOMAIN.to_vec();
        aad.extend_from_slice(&self.header());
        aad
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = self.header().to_vec();
        out.extend_from_slice(&self.verifier);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, SealedDefect> {
        if bytes.len() < 4 {
            return Err(SealedDefect::Truncated);
        }
        if &bytes[..4] != META_MAGIC {
            return Err(SealedDefect::UnknownFormat);
        }
        if bytes.len() != META_HEADER_LEN + NONCE_LEN + VERIFIER_PLAINTEXT.len() + TAG_LEN {
            return Err(SealedDefect::Truncated);
        }
        let params = KdfParams::decode(bytes[4..16].try_into().expect("12-byte slice"));
        let salt = bytes[16..32].try_into().expect("16-byte slice");
        Ok(Self {
            params,
            salt,
            verifier: bytes[META_HEADER_LEN..].to_vec(),
        })
    }

    /// Whether `kek` opens the verifier (that is, the passphrase was right).
    pub(crate) fn check(&self, kek: &LessSafeKey) -> bool {
        open(kek, &self.verifier_aad(), &self.verifier).is_ok_and(|v| v.as_slice() == VERIFIER_PLAINTEXT)
    }
}
