//! One-time BIP340 nonces for oracles (dlcspecs attestations).
//!
//! A committed nonce is a sealed secret `k` (with `R = kG` of even y) stored under
//! `key id ‖ 0x00 ‖ nonce id`. Signing computes the signature, then replaces the record, by
//! compare-and-swap on its version, with a consumed record that keeps `R`, the message and the
//! signature (never `k`); only the caller whose swap succeeded returns it. Asking again for the
//! same message returns the same signature (BIP340 with the same `k` and message is the same
//! signature, so this leaks nothing), which is how a crash between the swap and the reply, or a
//! failed audit append, is recovered; any other message is `NonceAlreadyUsed`. No interleaving
//! of threads, handles or restarts lets `k` sign two messages on one store; a store that is
//! restored from a backup is what the rollback anchor is for.

use bitcoin::hashes::{sha256, Hash, HashEngine};
use secp256k1::{
    constants::CURVE_ORDER, schnorr, All, Keypair, Message, Parity, Scalar, Secp256k1, SecretKey, XOnlyPublicKey,
};

use crate::error::SealedDefect;
use crate::HsmError;

const MAGIC: &[u8; 4] = b"AHN\x01";
const STATE_COMMITTED: u8 = 1;
/// Consumed by a build that kept only `R` (no message): every request is refused.
const STATE_CONSUMED: u8 = 2;
/// Consumed for a message, whose signature is kept.
const STATE_SIGNED: u8 = 3;
const SIGNED_LEN: usize = 37 + 32 + 64;
const AAD_DOMAIN: &[u8] = b"anya-hsm/nonce/v1";

/// The store key of a nonce record.
pub(crate) fn store_key(key: &str, nonce: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1 + nonce.len());
    out.extend_from_slice(key.as_bytes());
    out.push(0);
    out.extend_from_slice(nonce.as_bytes());
    out
}

/// Associated data binding a sealed nonce to its key, id and public point.
pub(crate) fn aad(key: &str, nonce: &str, r: &[u8; 32]) -> Vec<u8> {
    let mut out = AAD_DOMAIN.to_vec();
    out.push(u8::try_from(key.len()).expect("labels are at most 64 bytes"));
    out.extend_from_slice(key.as_bytes());
    out.push(u8::try_from(nonce.len()).expect("labels are at most 64 bytes"));
    out.extend_from_slice(nonce.as_bytes());
    out.extend_from_slice(r);
    out
}

/// A stored nonce record.
pub(crate) enum NonceRecord<'a> {
    Committed {
        r: [u8; 32],
        sealed: &'a [u8],
    },
    /// Consumed; with the message and signature when the record kept them.
    Consumed {
        r: [u8; 32],
        signed: Option<([u8; 32], [u8; 64])>,
    },
}

pub(crate) fn encode_committed(r: &[u8; 32], sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(37 + sealed.len());
    out.extend_from_slice(MAGIC);
    out.push(STATE_COMMITTED);
    out.extend_from_slice(r);
    out.extend_from_slice(sealed);
    out
}

pub(crate) fn encode_signed(r: &[u8; 32], message: &[u8; 32], signature: &schnorr::Signature) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNED_LEN);
    out.extend_from_slice(MAGIC);
    out.push(STATE_SIGNED);
    out.extend_from_slice(r);
    out.extend_from_slice(message);
    out.extend_from_slice(signature.as_ref());
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Result<NonceRecord<'_>, SealedDefect> {
    if bytes.len() < 37 {
        return Err(SealedDefect::Truncated);
    }
    if &bytes[..4] != MAGIC {
        return Err(SealedDefect::UnknownFormat);
    }
    let r: [u8; 32] = bytes[5..37].try_into().expect("32-byte slice");
    match bytes[4] {
        STATE_COMMITTED => Ok(NonceRecord::Committed {
            r,
            sealed: &bytes[37..],
        }),
        STATE_CONSUMED if bytes.len() == 37 => Ok(NonceRecord::Consumed { r, signed: None }),
        STATE_SIGNED if bytes.len() == SIGNED_LEN => Ok(NonceRecord::Consumed {
            r,
            signed: Some((
                bytes[37..69].try_into().expect("32-byte slice"),
                bytes[69..].try_into().expect("64-byte slice"),
            )),
        }),
        _ => Err(SealedDefect::BadHeader),
    }
}

/// A fresh secret nonce `k` whose point `R = kG` has even y, and `R`'s x coordinate.
pub(crate) fn fresh_nonce(
    secp: &Secp256k1<All>,
    rng: &ring::rand::SystemRandom,
) -> Result<(zeroize::Zeroizing<[u8; 32]>, XOnlyPublicKey), HsmError> {
    loop {
        let bytes = zeroize::Zeroizing::new(crate::software::seal::random::<32>(rng)?);
        let Ok(k) = SecretKey::from_slice(bytes.as_ref()) else {
            continue;
        };
        let (r, parity) = k.x_only_public_key(secp);
        let k = if parity == Parity::Odd { k.negate() } else { k };
        return Ok((zeroize::Zeroizing::new(k.secret_bytes()), r));
    }
}

fn tagged_hash(tag: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let tag_hash = sha256::Hash::hash(tag);
    let mut engine = sha256::Hash::engine();
    engine.input(tag_hash.as_ref());
    engine.input(tag_hash.as_ref());
    for p in parts {
        engine.input(p);
    }
    sha256::Hash::from_engine(engine).to_byte_array()
}

/// `x mod n` for a 256-bit big-endian `x` (which is below `2n`).
fn reduce_mod_n(mut x: [u8; 32]) -> [u8; 32] {
    if x >= CURVE_ORDER {
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let mut d = i16::from(x[i]) - i16::from(CURVE_ORDER[i]) - borrow;
            borrow = i16::from(d < 0);
            if d < 0 {
                d += 256;
            }
            x[i] = u8::try_from(d).expect("digit in 0..256");
        }
    }
    x
}

/// The BIP340 signature of `message` by `keypair` with the secret nonce `k` (whose point has
/// even y): `(R, k + e·d)`. Checked with secp256k1's verifier before it is returned.
///
/// This is the bare arithmetic the software provider signs a committed nonce with, without the
/// store, the audit chain or the one-message rule (public as
/// `anya_hsm::software::bip340_sign_with_nonce` for benchmarks and tests that compare with
/// it). Signing two messages with one `k` with it reveals the key: that rule is the provider's.
pub fn sign_with_k(
    secp: &Secp256k1<All>,
    keypair: &Keypair,
    k: &[u8; 32],
    message: &[u8; 32],
) -> Result<schnorr::Signature, HsmError> {
    const FAIL: HsmError = HsmError::Crypto {
        what: "bip340 with committed nonce",
    };
    let k = SecretKey::from_slice(k).map_err(|_| FAIL)?;
    let (r, r_parity) = k.x_only_public_key(secp);
    if r_parity == Parity::Odd {
        return Err(FAIL);
    }
    let (p, p_parity) = keypair.x_only_public_key();
    let d = if p_parity == Parity::Odd {
        keypair.secret_key().negate()
    } else {
        keypair.secret_key()
    };
    let e = reduce_mod_n(tagged_hash(
        b"BIP0340/challenge",
        &[&r.serialize(), &p.serialize(), message],
    ));
    let e = Scalar::from_be_bytes(e).map_err(|_| FAIL)?;
    let s = d
        .mul_tweak(&e)
        .map_err(|_| FAIL)?
        .add_tweak(&Scalar::from(k))
        .map_err(|_| FAIL)?;
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(&r.serialize());
    bytes[32..].copy_from_slice(&s.secret_bytes());
    let sig = schnorr::Signature::from_slice(&bytes).map_err(|_| FAIL)?;
    secp.verify_schnorr(&sig, &Message::from_digest(*message), &p)
        .map_err(|_| FAIL)?;
    Ok(sig)
}

/// The stored `signature` if it is a valid BIP340 signature of `message` by `keypair` with the
/// nonce point `r`; `None` for a record that does not hold one (damaged or written by someone
/// else).
pub(crate) fn check_signed(
    secp: &Secp256k1<All>,
    keypair: &Keypair,
    r: &[u8; 32],
    message: &[u8; 32],
    signature: &[u8; 64],
) -> Option<schnorr::Signature> {
    let sig = schnorr::Signature::from_slice(signature).ok()?;
    let (p, _) = keypair.x_only_public_key();
    (signature[..32] == r[..] && secp.verify_schnorr(&sig, &Message::from_digest(*message), &p).is_ok()).then_some(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_subtracts_order_once() {
        let mut over = CURVE_ORDER;
        over[31] += 5;
        let mut five = [0u8; 32];
        five[31] = 5;
        assert_eq!(reduce_mod_n(over), five);
        assert_eq!(reduce_mod_n(CURVE_ORDER), [0u8; 32]);
        assert_eq!(reduce_mod_n(five), five);
        assert_eq!(
            reduce_mod_n([0xff; 32])[..16],
            {
                let mut expect = [0u8; 32];
                // 2^256 - 1 - n = 0x14551231950b75fc4402da1732fc9bebe
                expect[15] = 0x01;
                expect[16..].copy_from_slice(&[
                    0x45, 0x51, 0x23, 0x19, 0x50, 0xb7, 0x5f, 0xc4, 0x40, 0x2d, 0xa1, 0x73, 0x2f, 0xc9, 0xbe, 0xbe,
                ]);
                expect
            }[..16]
        );
    }

    #[test]
    fn committed_nonce_signature_verifies_and_uses_r() {
        let secp = Secp256k1::new();
        let rng = ring::rand::SystemRandom::new();
        let keypair = Keypair::from_seckey_slice(&secp, &[7u8; 32]).expect("valid key");
        for _ in 0..16 {
            let (k, r) = fresh_nonce(&secp, &rng).expect("nonce");
            let sig = sign_with_k(&secp, &keypair, &k, &[3u8; 32]).expect("sign");
            assert_eq!(&sig.as_ref()[..32], &r.serialize());
        }
    }
}
