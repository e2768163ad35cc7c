//! BIP340 test vectors (bip-0340/test-vectors.csv), read from the shared vector directory.

mod common;

use anya_hsm::{AuxRand, HsmProvider, KeyMaterial, KeyPolicy, KeyRef, KeySpec, Label, SecretBytes};
use bitcoin::hashes::{sha256, Hash, HashEngine};
use secp256k1::{
    constants::CURVE_ORDER, schnorr, Message, Parity, PublicKey, Scalar, Secp256k1, SecretKey, XOnlyPublicKey,
};

struct Case {
    index: usize,
    secret: Option<Vec<u8>>,
    public: Vec<u8>,
    aux: Vec<u8>,
    message: Vec<u8>,
    signature: Vec<u8>,
    valid: bool,
}

fn cases() -> Vec<Case> {
    let csv = common::read_vector("bip340/test-vectors.csv");
    csv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            Case {
                index: f[0].parse().expect("index"),
                secret: (!f[1].is_empty()).then(|| common::hex(f[1])),
                public: common::hex(f[2]),
                aux: common::hex(f[3]),
                message: common::hex(f[4]),
                signature: common::hex(f[5]),
                valid: match f[6] {
                    "TRUE" => true,
                    "FALSE" => false,
                    other => panic!("verification result {other}"),
                },
            }
        })
        .collect()
}

fn tagged_hash(tag: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let t = sha256::Hash::hash(tag);
    let mut e = sha256::Hash::engine();
    e.input(t.as_ref());
    e.input(t.as_ref());
    for p in parts {
        e.input(p);
    }
    sha256::Hash::from_engine(e).to_byte_array()
}

fn reduce(mut x: [u8; 32]) -> [u8; 32] {
    if x >= CURVE_ORDER {
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let mut d = i16::from(x[i]) - i16::from(CURVE_ORDER[i]) - borrow;
            borrow = i16::from(d < 0);
            if d < 0 {
                d += 256;
            }
            x[i] = d as u8;
        }
    }
    x
}

/// BIP340 verification for messages of any length, from secp256k1's point operations
/// (secp256k1 0.29's `verify_schnorr` takes only 32-byte messages).
fn verify_any_length(public: &[u8], message: &[u8], sig: &[u8]) -> bool {
    let secp = Secp256k1::new();
    let Ok(p) = XOnlyPublicKey::from_slice(public) else {
        return false;
    };
    let Ok(s) = SecretKey::from_slice(&sig[32..]) else {
        return false;
    };
    let e = reduce(tagged_hash(b"BIP0340/challenge", &[&sig[..32], public, message]));
    let p_even = p.public_key(Parity::Even);
    let minus_ep = match Scalar::from_be_bytes(e) {
        Ok(e) if e != Scalar::ZERO => p_even.mul_tweak(&secp, &e).expect("nonzero tweak").negate(&secp),
        _ => return false,
    };
    let Ok(r) = PublicKey::from_secret_key(&secp, &s).combine(&minus_ep) else {
        return false;
    };
    let (rx, parity) = r.x_only_public_key();
    parity == Parity::Even && rx.serialize()[..] == sig[..32]
}

#[test]
fn all_19_cases_verify_as_expected_with_bare_secp256k1() {
    let secp = Secp256k1::verification_only();
    let cases = cases();
    assert_eq!(cases.len(), 19);
    for c in &cases {
        let general = verify_any_length(&c.public, &c.message, &c.signature);
        assert_eq!(general, c.valid, "case {} (point arithmetic)", c.index);
        if let Ok(msg) = <[u8; 32]>::try_from(c.message.as_slice()) {
            let lib = match (
                XOnlyPublicKey::from_slice(&c.public),
                schnorr::Signature::from_slice(&c.signature),
            ) {
                (Ok(pk), Ok(sig)) => secp.verify_schnorr(&sig, &Message::from_digest(msg), &pk).is_ok(),
                _ => false,
            };
            assert_eq!(lib, c.valid, "case {} (secp256k1 verify_schnorr)", c.index);
        }
    }
}

#[test]
fn provider_signs_every_case_with_a_secret_key_bit_for_bit() {
    let f = common::fixture();
    let secp = Secp256k1::verification_only();
    let mut signed = 0;
    for c in cases() {
        let Some(secret) = &c.secret else { continue };
        let id = Label::new(format!("bip340-{}", c.index)).expect("label");
        let policy = KeyPolicy::default_for(KeySpec::Secp256k1);
        f.hsm
            .import_key(&id, KeyMaterial::Secp256k1(SecretBytes::from_slice(secret)), policy)
            .expect("import");
        let Ok(message) = <[u8; 32]>::try_from(c.message.as_slice()) else {
            // Cases 15-18 sign messages of 0, 1, 17 and 100 bytes; the provider's BIP340 takes
            // 32-byte messages (sighashes, dlcspecs attestation digests). Their signatures are
            // still checked above by the any-length verifier.
            continue;
        };
        let aux: [u8; 32] = c.aux.as_slice().try_into().expect("32-byte aux");
        let sig = f
            .hsm
            .sign_schnorr(KeyRef::Key(&id), &message, AuxRand::Given(aux))
            .expect("sign");
        assert_eq!(sig.as_ref(), c.signature.as_slice(), "case {}", c.index);
        let pk = XOnlyPublicKey::from_slice(&c.public).expect("valid public key");
        secp.verify_schnorr(&sig, &Message::from_digest(message), &pk)
            .expect("verifies");
        signed += 1;
    }
    assert_eq!(signed, 4, "cases 0-3 have a secret key and a 32-byte message");
    f.hsm.verify_audit_chain().expect("audit chain");
}
