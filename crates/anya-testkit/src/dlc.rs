//! An independent check of DLC oracle messages, written from the dlcspecs text with bare
//! secp256k1 and SHA-256: no ddk-messages validation and no anya code, so that what anya's
//! oracle signs is judged by code that did not make it.
//!
//! - An announcement signs, with the oracle's key, the BIP340 tagged hash
//!   `SHA256(SHA256(tag) ‖ SHA256(tag) ‖ oracle_event TLV)` with tag `DLC/oracle/announcement/v0`.
//! - An attestation carries one signature per nonce, in order; signature `i` signs the tagged
//!   hash (tag `DLC/oracle/attestation/v0`) of outcome `i`'s UTF-8 bytes, and its `R` is nonce
//!   `i` of the announcement.

use bitcoin::hashes::{sha256, Hash, HashEngine};
use ddk_messages::oracle_msgs::{OracleAnnouncement, OracleAttestation, OracleEvent};
use lightning::util::ser::Writeable;
use secp256k1::{schnorr, Message, Secp256k1, XOnlyPublicKey};

/// SHA256(SHA256(tag) ‖ SHA256(tag) ‖ data).
pub fn tagged(tag: &str, data: &[u8]) -> Message {
    let t = sha256::Hash::hash(tag.as_bytes());
    let mut e = sha256::Hash::engine();
    e.input(t.as_ref());
    e.input(t.as_ref());
    e.input(data);
    Message::from_digest(sha256::Hash::from_engine(e).to_byte_array())
}

/// The BigSize encoding (BOLT 1) of `n`.
pub fn bigsize(n: u64) -> Vec<u8> {
    match n {
        0..=0xfc => vec![n as u8],
        0xfd..=0xffff => [&[0xfd][..], &(n as u16).to_be_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[0xfe][..], &(n as u32).to_be_bytes()].concat(),
        _ => [&[0xff][..], &n.to_be_bytes()].concat(),
    }
}

/// `type ‖ length ‖ value`, as the spec's TLV streams write a message.
pub fn tlv(ty: u64, value: &[u8]) -> Vec<u8> {
    [bigsize(ty), bigsize(value.len() as u64), value.to_vec()].concat()
}

/// The spec's `oracle_event` TLV (type 55330).
pub fn event_tlv(event: &OracleEvent) -> Vec<u8> {
    tlv(55330, &event.encode())
}

/// Checks an announcement's signature over the tagged hash of its event.
pub fn verify_announcement(a: &OracleAnnouncement) -> Result<(), String> {
    let secp = Secp256k1::verification_only();
    let msg = tagged("DLC/oracle/announcement/v0", &event_tlv(&a.oracle_event));
    secp.verify_schnorr(&a.announcement_signature, &msg, &a.oracle_public_key)
        .map_err(|e| format!("announcement signature: {e}"))
}

/// Checks an attestation against its announcement: one signature per nonce, each over the
/// tagged hash of its outcome, each with the announced nonce as `R`, by the same oracle, for
/// the same event.
pub fn verify_attestation(a: &OracleAttestation, ann: &OracleAnnouncement) -> Result<(), String> {
    let secp = Secp256k1::verification_only();
    let nonces = &ann.oracle_event.oracle_nonces;
    if a.signatures.len() != nonces.len() || a.outcomes.len() != nonces.len() {
        return Err(format!(
            "{} signatures, {} outcomes for {} nonces",
            a.signatures.len(),
            a.outcomes.len(),
            nonces.len()
        ));
    }
    if a.oracle_public_key != ann.oracle_public_key || a.event_id != ann.oracle_event.event_id {
        return Err("not this announcement's oracle or event".into());
    }
    for (i, ((sig, outcome), nonce)) in a.signatures.iter().zip(&a.outcomes).zip(nonces).enumerate() {
        let msg = tagged("DLC/oracle/attestation/v0", outcome.as_bytes());
        secp.verify_schnorr(sig, &msg, &a.oracle_public_key)
            .map_err(|e| format!("signature {i}: {e}"))?;
        let r = XOnlyPublicKey::from_slice(&sig.as_ref()[..32]).map_err(|e| format!("R {i}: {e}"))?;
        if r != *nonce {
            return Err(format!("signature {i} does not use nonce {i}"));
        }
    }
    Ok(())
}

/// A signature with one bit of `s` flipped.
pub fn tampered(sig: &schnorr::Signature) -> schnorr::Signature {
    let mut b = *sig.as_ref();
    b[63] ^= 1;
    schnorr::Signature::from_slice(&b).expect("64 bytes")
}
