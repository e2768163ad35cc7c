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

use crate::error::{KekSource, SealedDefect};
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

/// The key-encryption key, and the audit-head key derived from it.
pub(crate) struct Kek {
    /// AES-256-GCM under the KEK seals entries, nonces and the header's verifier.
    pub(crate) aead: LessSafeKey,
    /// HMAC-SHA256 key of the audit head: HMAC-SHA256(KEK, "anya-hsm/audit-key/v1").
    pub(crate) audit: ring::hmac::Key,
}

impl Kek {
    /// Both keys from the KEK's 32 bytes.
    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> Result<Self, HsmError> {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, bytes)
            .map_err(|_| HsmError::Crypto { what: "aes key" })?;
        let derive = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes);
        let audit = Zeroizing::new(ring::hmac::sign(&derive, AUDIT_KEY_DOMAIN).as_ref().to_vec());
        Ok(Self {
            aead: LessSafeKey::new(unbound),
            audit: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &audit),
        })
    }
}

const AUDIT_KEY_DOMAIN: &[u8] = b"anya-hsm/audit-key/v1";

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

/// The digest of a sealed key entry, as the audit chain records it.
pub(crate) fn entry_digest(bytes: &[u8]) -> [u8; 32] {
    use bitcoin::hashes::{sha256, Hash, HashEngine};
    let mut engine = sha256::Hash::engine();
    engine.input(b"anya-hsm/entry/v1");
    engine.input(bytes);
    sha256::Hash::from_engine(engine).to_byte_array()
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

/// How the keystore header's key-encryption key is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KekOrigin {
    /// Argon2id over the passphrase (format version 1).
    Passphrase {
        /// The Argon2id parameters.
        params: KdfParams,
        /// The Argon2id salt.
        salt: [u8; 16],
    },
    /// A random KEK encrypted by an AES-256 key on a PKCS#11 token (format version 2, source
    /// [`SOURCE_TOKEN`]).
    #[cfg_attr(
        not(feature = "pkcs11"),
        allow(dead_code, reason = "read and written only by the pkcs11 envelope mode")
    )]
    Token {
        /// `CKA_LABEL` of the token's AES-256 key.
        key_label: Vec<u8>,
        /// How the KEK is wrapped; [`MECHANISM_AES_GCM`] is the only one.
        mechanism: u8,
        /// `iv ‖ ciphertext ‖ tag` of the KEK.
        wrapped: Vec<u8>,
    },
}

impl KekOrigin {
    /// The public kind of this origin.
    pub(crate) fn kind(&self) -> KekSource {
        match self {
            KekOrigin::Passphrase { .. } => KekSource::Passphrase,
            KekOrigin::Token { .. } => KekSource::Pkcs11Token,
        }
    }
}

/// Format version 2 tag: the KEK is wrapped by a PKCS#11 token key.
const SOURCE_TOKEN: u8 = 2;
/// `CKM_AES_GCM`, 12-byte IV, 16-byte tag, the key label bound as associated data.
pub(crate) const MECHANISM_AES_GCM: u8 = 1;
/// `iv ‖ ciphertext ‖ tag` of a 32-byte KEK under [`MECHANISM_AES_GCM`].
pub(crate) const WRAPPED_KEK_LEN: usize = 12 + 32 + TAG_LEN;
const META_V2_MAGIC: &[u8; 4] = b"AHS\x02";
const VERIFIER_LEN: usize = NONCE_LEN + VERIFIER_PLAINTEXT.len() + TAG_LEN;
/// Longest accepted token key label.
pub(crate) const MAX_KEY_LABEL_LEN: usize = 128;

/// The keystore header: where the KEK comes from and the sealed verifier.
///
/// Version 1 (passphrase keystores, still written for them so that older builds open them):
///
/// ```text
/// "AHS" 0x01 | memory u32 | passes u32 | lanes u32 | salt[16] | verifier
/// ```
///
/// Version 2 carries a KEK-source tag; tag 2 is a token-wrapped KEK:
///
/// ```text
/// "AHS" 0x02 | source u8 = 2 | mechanism u8 = 1 | label len u8 | label | wrapped len u8 | wrapped | verifier
/// ```
///
/// The verifier is a known value sealed under the KEK with everything before it as associated
/// data, so a wrong KEK or an edited header is recognised, never used.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub(crate) origin: KekOrigin,
    verifier: Vec<u8>,
}

impl Meta {
    /// A new header for `kek` obtained as `origin` says.
    pub(crate) fn new(kek: &LessSafeKey, rng: &SystemRandom, origin: KekOrigin) -> Result<Self, HsmError> {
        let mut meta = Self {
            origin,
            verifier: Vec::new(),
        };
        meta.verifier = seal(kek, rng, &meta.verifier_aad(), &VERIFIER_PLAINTEXT)?;
        Ok(meta)
    }

    fn header(&self) -> Vec<u8> {
        match &self.origin {
            KekOrigin::Passphrase { params, salt } => {
                let mut out = Vec::with_capacity(META_HEADER_LEN);
                out.extend_from_slice(META_MAGIC);
                out.extend_from_slice(&params.encode());
                out.extend_from_slice(salt);
                out
            }
            KekOrigin::Token {
                key_label,
                mechanism,
                wrapped,
            } => {
                let mut out = Vec::with_capacity(8 + key_label.len() + wrapped.len());
                out.extend_from_slice(META_V2_MAGIC);
                out.push(SOURCE_TOKEN);
                out.push(*mechanism);
                out.push(u8::try_from(key_label.len()).expect("labels are checked to be at most 128 bytes"));
                out.extend_from_slice(key_label);
                out.push(u8::try_from(wrapped.len()).expect("a wrapped kek is 60 bytes"));
                out.extend_from_slice(wrapped);
                out
            }
        }
    }

    fn verifier_aad(&self) -> Vec<u8> {
        let mut aad = VERIFIER_AAD_DOMAIN.to_vec();
        aad.extend_from_slice(&self.header());
        aad
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = self.header();
        out.extend_from_slice(&self.verifier);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, SealedDefect> {
        if bytes.len() < 4 {
            return Err(SealedDefect::Truncated);
        }
        if &bytes[..4] == META_MAGIC {
            if bytes.len() != META_HEADER_LEN + VERIFIER_LEN {
                return Err(SealedDefect::Truncated);
            }
            let params = KdfParams::decode(bytes[4..16].try_into().expect("12-byte slice"));
            let salt = bytes[16..32].try_into().expect("16-byte slice");
            return Ok(Self {
                origin: KekOrigin::Passphrase { params, salt },
                verifier: bytes[META_HEADER_LEN..].to_vec(),
            });
        }
        if &bytes[..4] != META_V2_MAGIC {
            return Err(SealedDefect::UnknownFormat);
        }
        let mut rest = &bytes[4..];
        let [source, mechanism, label_len] = take(&mut rest, 3)?.try_into().expect("3-byte slice");
        if source != SOURCE_TOKEN || mechanism != MECHANISM_AES_GCM {
            return Err(SealedDefect::BadHeader);
        }
        let label_len = usize::from(label_len);
        if label_len == 0 || label_len > MAX_KEY_LABEL_LEN {
            return Err(SealedDefect::BadHeader);
        }
        let key_label = take(&mut rest, label_len)?.to_vec();
        let wrapped_len = usize::from(take(&mut rest, 1)?[0]);
        if wrapped_len != WRAPPED_KEK_LEN {
            return Err(SealedDefect::BadHeader);
        }
        let wrapped = take(&mut rest, wrapped_len)?.to_vec();
        let verifier = take(&mut rest, VERIFIER_LEN)?.to_vec();
        if !rest.is_empty() {
            return Err(SealedDefect::BadHeader);
        }
        Ok(Self {
            origin: KekOrigin::Token {
                key_label,
                mechanism,
                wrapped,
            },
            verifier,
        })
    }

    /// Whether `kek` opens the verifier (that is, the passphrase or unwrapped KEK was right).
    pub(crate) fn check(&self, kek: &LessSafeKey) -> bool {
        open(kek, &self.verifier_aad(), &self.verifier).is_ok_and(|v| v.as_slice() == VERIFIER_PLAINTEXT)
    }
}

/// The next `n` bytes of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], SealedDefect> {
    if rest.len() < n {
        return Err(SealedDefect::Truncated);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}
