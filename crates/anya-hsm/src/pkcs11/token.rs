//! Token object templates and the encodings PKCS#11 uses for curves and points.

use cryptoki::object::{Attribute, KeyType, ObjectClass};

use crate::{KeyPolicy, KeySpec, Usage};

/// DER of OID 1.3.132.0.10 (secp256k1); SoftHSM2 makes secp256k1 keys only from the OID.
pub(crate) const SECP256K1_PARAMS: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
/// DER of OID 1.2.840.10045.3.1.7 (prime256v1, P-256).
pub(crate) const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of OID 1.3.101.112 (Ed25519, RFC 8410).
pub(crate) const ED25519_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// `CKA_EC_POINT` is a DER OCTET STRING around the point; some modules return the bare point.
pub(crate) fn unwrap_octet_string(bytes: &[u8], len: usize) -> Option<&[u8]> {
    if bytes.len() == len {
        return Some(bytes);
    }
    match bytes {
        [0x04, n, rest @ ..] if usize::from(*n) == len && rest.len() == len => Some(rest),
        _ => None,
    }
}

/// A DER OCTET STRING of fewer than 128 bytes.
pub(crate) fn octet_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(0x04);
    out.push(u8::try_from(bytes.len()).expect("points are shorter than 128 bytes"));
    out.extend_from_slice(bytes);
    out
}

fn common(label: &[u8], class: ObjectClass, key_type: KeyType) -> Vec<Attribute> {
    vec![
        Attribute::Class(class),
        Attribute::KeyType(key_type),
        Attribute::Token(true),
        Attribute::Label(label.to_vec()),
        Attribute::Id(label.to_vec()),
    ]
}

fn curve(spec: KeySpec) -> (KeyType, &'static [u8], Usage) {
    match spec {
        KeySpec::Ed25519 => (KeyType::EC_EDWARDS, &ED25519_PARAMS, Usage::SignEd25519),
        KeySpec::P256 => (KeyType::EC, &P256_PARAMS, Usage::SignP256),
        _ => (KeyType::EC, &SECP256K1_PARAMS, Usage::SignEcdsa),
    }
}

fn secrecy(policy: KeyPolicy) -> [Attribute; 3] {
    [
        Attribute::Private(true),
        Attribute::Sensitive(!policy.exportable),
        Attribute::Extractable(policy.exportable),
    ]
}

/// The public half of a secp256k1, P-256 or Ed25519 key pair.
pub(crate) fn public_template(label: &[u8], spec: KeySpec, point: Option<&[u8]>) -> Vec<Attribute> {
    let (key_type, params, _) = curve(spec);
    let mut t = common(label, ObjectClass::PUBLIC_KEY, key_type);
    t.extend([
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(params.to_vec()),
    ]);
    if let Some(point) = point {
        t.push(Attribute::EcPoint(octet_string(point)));
    }
    t
}

/// The private half; the token's `CKA_SIGN` follows the policy.
pub(crate) fn private_template(label: &[u8], spec: KeySpec, policy: KeyPolicy, value: Option<&[u8]>) -> Vec<Attribute> {
    let (key_type, params, usage) = curve(spec);
    let mut t = common(label, ObjectClass::PRIVATE_KEY, key_type);
    t.extend(secrecy(policy));
    t.push(Attribute::Sign(policy.allowed.contains(usage)));
    if let Some(value) = value {
        t.push(Attribute::EcParams(params.to_vec()));
        t.push(Attribute::Value(value.to_vec()));
    }
    t
}

/// An AES-256 secret key; the token's `CKA_ENCRYPT`/`CKA_DECRYPT` follow the policy.
pub(crate) fn aes_template(label: &[u8], policy: KeyPolicy, value: Option<&[u8]>) -> Vec<Attribute> {
    let mut t = common(label, ObjectClass::SECRET_KEY, KeyType::AES);
    t.extend(secrecy(policy));
    t.extend([
        Attribute::Encrypt(policy.allowed.contains(Usage::Encrypt)),
        Attribute::Decrypt(policy.allowed.contains(Usage::Decrypt)),
    ]);
    match value {
        Some(value) => t.push(Attribute::Value(value.to_vec())),
        None => t.push(Attribute::ValueLen(32.into())),
    }
    t
}
