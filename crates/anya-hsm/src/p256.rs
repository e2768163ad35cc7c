//! P-256 (secp256r1, prime256v1) ECDSA: the signature type and the PKCS#8 encoding of keys.
//!
//! A P-256 key travels as a PKCS#8 v1 document (RFC 5208 around the `ECPrivateKey` of
//! RFC 5915, with its public key) rather than as a bare scalar: ring, which the software
//! provider signs with, has no API to compute a public key from a scalar, and it only loads
//! keys whose document carries the public key. The document is what `ring` generates and what
//! `openssl pkcs8 -topk8 -nocrypt -outform DER` writes.

#![cfg_attr(
    not(any(feature = "software", feature = "pkcs11")),
    allow(
        dead_code,
        reason = "the PKCS#8 helpers serve the providers; without one only the public types remain"
    )
)]

use std::fmt;

use zeroize::Zeroizing;

/// The DER prefix of a P-256 PKCS#8 v1 document with the public key (`ring`'s template): the
/// outer SEQUENCE, version 0, the `id-ecPublicKey`/`prime256v1` algorithm, the OCTET STRING
/// around the `ECPrivateKey` SEQUENCE, its version 1 and the OCTET STRING header of the scalar.
const PKCS8_PREFIX: [u8; 36] = [
    0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
    0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x04, 0x6d, 0x30, 0x6b, 0x02, 0x01, 0x01, 0x04, 0x20,
];
/// Between the scalar and the public point: `[1]` around a BIT STRING with no unused bits.
const PKCS8_MIDDLE: [u8; 5] = [0xa1, 0x44, 0x03, 0x42, 0x00];

/// An ECDSA P-256 signature of SHA-256(message) in the fixed-length form `r ‖ s` (32 bytes
/// each, big-endian): the form of JOSE `ES256`, of `CKM_ECDSA` and of ring's
/// `ECDSA_P256_SHA256_FIXED`.
///
/// It is not normalised to low-S: P-256 verifiers (WebAuthn, JOSE, TLS, X.509) accept either
/// `s`, and a signature is returned exactly as the provider's signer made it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct P256Signature(pub [u8; 64]);

impl P256Signature {
    /// `r`, big-endian.
    pub fn r(&self) -> &[u8; 32] {
        self.0[..32].try_into().expect("the first 32 of 64 bytes")
    }

    /// `s`, big-endian.
    pub fn s(&self) -> &[u8; 32] {
        self.0[32..].try_into().expect("the last 32 of 64 bytes")
    }

    /// The ASN.1 DER form (`SEQUENCE { INTEGER r, INTEGER s }`, RFC 3279), as X.509, TLS and
    /// WebAuthn assertions carry it and ring's `ECDSA_P256_SHA256_ASN1` verifies it.
    pub fn to_der(&self) -> Vec<u8> {
        let (r, s) = (der_integer(self.r()), der_integer(self.s()));
        let mut out = Vec::with_capacity(2 + r.len() + s.len());
        out.push(0x30);
        out.push(u8::try_from(r.len() + s.len()).expect("two integers of at most 35 bytes"));
        out.extend_from_slice(&r);
        out.extend_from_slice(&s);
        out
    }
}

impl AsRef<[u8]> for P256Signature {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for P256Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("P256Signature(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// A DER INTEGER of the unsigned big-endian `bytes`: leading zeros dropped, one added back
/// where the top bit would make it negative.
fn der_integer(bytes: &[u8; 32]) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(31);
    let digits = &bytes[start..];
    let pad = digits[0] & 0x80 != 0;
    let len = digits.len() + usize::from(pad);
    let mut out = Vec::with_capacity(2 + len);
    out.push(0x02);
    out.push(u8::try_from(len).expect("at most 33 bytes"));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(digits);
    out
}

/// The PKCS#8 v1 document of the P-256 key with `scalar` and uncompressed public `point`.
/// Nothing is checked: the caller loads it with ring, which checks that the two match.
pub(crate) fn pkcs8_from_parts(scalar: &[u8; 32], point: &[u8; 65]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(PKCS8_PREFIX.len() + 32 + PKCS8_MIDDLE.len() + 65));
    out.extend_from_slice(&PKCS8_PREFIX);
    out.extend_from_slice(scalar);
    out.extend_from_slice(&PKCS8_MIDDLE);
    out.extend_from_slice(point);
    out
}

/// The 32-byte private scalar inside a PKCS#8 document of an EC key, or `None` if the document
/// does not have the shape of RFC 5208 around RFC 5915. Only the path to the scalar is read;
/// the caller has the document checked as a whole by ring.
pub(crate) fn pkcs8_scalar(doc: &[u8]) -> Option<&[u8; 32]> {
    let (outer, _) = tlv(doc, 0x30)?;
    let (_version, rest) = tlv(outer, 0x02)?;
    let (_algorithm, rest) = tlv(rest, 0x30)?;
    let (private_key, _) = tlv(rest, 0x04)?;
    let (ec_private_key, _) = tlv(private_key, 0x30)?;
    let (version, rest) = tlv(ec_private_key, 0x02)?;
    if version != [1] {
        return None;
    }
    let (scalar, _) = tlv(rest, 0x04)?;
    scalar.try_into().ok()
}

/// One DER element with tag `tag` at the start of `input`: its value and what follows it.
/// Definite lengths of up to two bytes (documents here are far below 64 KiB).
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let [t, first, rest @ ..] = input else {
        return None;
    };
    if *t != tag {
        return None;
    }
    let (len, rest) = match *first {
        n if n < 0x80 => (usize::from(n), rest),
        0x81 => {
            let [n, rest @ ..] = rest else { return None };
            (usize::from(*n), rest)
        }
        0x82 => {
            let [hi, lo, rest @ ..] = rest else { return None };
            (usize::from(u16::from_be_bytes([*hi, *lo])), rest)
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    use super::*;

    #[test]
    fn template_is_rings_document() {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).expect("load");
        let scalar = pkcs8_scalar(doc.as_ref()).expect("scalar");
        let point: [u8; 65] = pair.public_key().as_ref().try_into().expect("uncompressed point");
        assert_eq!(pkcs8_from_parts(scalar, &point).as_slice(), doc.as_ref());
    }

    #[test]
    fn malformed_documents_have_no_scalar() {
        assert!(pkcs8_scalar(&[]).is_none());
        assert!(pkcs8_scalar(&[0x30, 0x81]).is_none());
        assert!(pkcs8_scalar(&[0x30, 0x05, 0x02, 0x01, 0x00, 0x30, 0x00]).is_none());
        let mut doc = pkcs8_from_parts(&[7; 32], &[4; 65]).to_vec();
        doc[33] = 2; // ECPrivateKey version 2
        assert!(pkcs8_scalar(&doc).is_none());
        doc.truncate(50);
        assert!(pkcs8_scalar(&doc).is_none());
    }

    #[test]
    fn der_matches_rings_asn1_form() {
        use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generate");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).expect("load");
        for i in 0..64u8 {
            let sig = pair.sign(&rng, &[i]).expect("sign");
            let sig = P256Signature(sig.as_ref().try_into().expect("64 bytes"));
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, pair.public_key().as_ref())
                .verify(&[i], &sig.to_der())
                .expect("der verifies");
        }
        // Small and high-bit integers take their minimal DER form.
        let mut fixed = [0u8; 64];
        fixed[31] = 1;
        fixed[32] = 0x80;
        let der = P256Signature(fixed).to_der();
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 0x21, 0x00]);
    }
}
