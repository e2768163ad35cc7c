//! The token side of the software provider's envelope mode: a random keystore KEK encrypted
//! and decrypted by an AES-256 key that never leaves the token.

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::{context, shared_session, Pkcs11Options};
use crate::HsmError;

const GCM_IV_LEN: usize = 12;
const GCM_TAG_BITS: u64 = 128;
const KEK_LEN: usize = 32;
/// Associated data domain of the wrapped KEK; the key label follows it.
const WRAP_AAD_DOMAIN: &[u8] = b"anya-hsm/kek/v1";

fn wrap_aad(key_label: &[u8]) -> Vec<u8> {
    let mut aad = WRAP_AAD_DOMAIN.to_vec();
    aad.extend_from_slice(key_label);
    aad
}

fn find_key(session: &Session, key_label: &[u8]) -> Result<Option<ObjectHandle>, HsmError> {
    Ok(session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(key_label.to_vec()),
        ])?
        .into_iter()
        .next())
}

/// Runs `f` on the process's shared logged-in session of the token `token` names.
fn with_session<T>(token: &Pkcs11Options, f: impl FnOnce(&Session) -> Result<T, HsmError>) -> Result<T, HsmError> {
    let ctx = context(&token.module)?;
    let session = shared_session(&ctx, &token.module, &token.token_label, &token.pin)?;
    let guard = session.lock().map_err(|_| HsmError::Poisoned)?;
    f(&guard)
}

/// `iv ‖ ciphertext ‖ tag` of `kek` under the token's AES-256 key labelled `key_label`, which
/// is generated (sensitive, not extractable, a token object) if the token has none.
pub(crate) fn wrap_kek(
    token: &Pkcs11Options,
    rng: &SystemRandom,
    key_label: &[u8],
    kek: &[u8; KEK_LEN],
) -> Result<Vec<u8>, HsmError> {
    let mut iv = [0u8; GCM_IV_LEN];
    rng.fill(&mut iv).map_err(|_| HsmError::Random)?;
    let aad = wrap_aad(key_label);
    with_session(token, |session| {
        // Find and generate under one lock of the shared session, so two creations on one
        // label cannot both generate a key.
        let key = match find_key(session, key_label)? {
            Some(key) => key,
            None => session.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(true),
                    Attribute::Label(key_label.to_vec()),
                    Attribute::Id(key_label.to_vec()),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::ValueLen((KEK_LEN as u64).into()),
                ],
            )?,
        };
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, &aad, GCM_TAG_BITS.into())?;
        let sealed = session.encrypt(&Mechanism::AesGcm(params), key, kek)?;
        let mut out = Vec::with_capacity(GCM_IV_LEN + sealed.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&sealed);
        Ok(out)
    })
}

/// The KEK that [`wrap_kek`] wrapped, decrypted by the token's key labelled `key_label`.
///
/// [`HsmError::TokenKekNotFound`] if the token has no such key, [`HsmError::KekUnwrapFailed`]
/// if its key does not authenticate `wrapped`.
pub(crate) fn unwrap_kek(
    token: &Pkcs11Options,
    key_label: &[u8],
    wrapped: &[u8],
) -> Result<Zeroizing<[u8; KEK_LEN]>, HsmError> {
    let aad = wrap_aad(key_label);
    let (iv, body) = wrapped.split_at(wrapped.len().min(GCM_IV_LEN));
    let mut iv: [u8; GCM_IV_LEN] = iv.try_into().map_err(|_| HsmError::KeystoreCorrupt {
        defect: crate::SealedDefect::Truncated,
    })?;
    let plain = with_session(token, |session| {
        let key = find_key(session, key_label)?.ok_or_else(|| HsmError::TokenKekNotFound {
            label: String::from_utf8_lossy(key_label).into_owned(),
        })?;
        let params = GcmParams::new(&mut iv, &aad, GCM_TAG_BITS.into())?;
        match session.decrypt(&Mechanism::AesGcm(params), key, body) {
            Ok(plain) => Ok(Zeroizing::new(plain)),
            // As in the provider's `unseal`: a tag that does not authenticate is one of these
            // (SoftHSM2 answers CKR_GENERAL_ERROR from C_Decrypt itself).
            Err(
                source @ CkError::Pkcs11(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::FunctionFailed
                    | RvError::GeneralError,
                    Function::Decrypt,
                ),
            ) => Err(HsmError::KekUnwrapFailed { source }),
            Err(e) => Err(e.into()),
        }
    })?;
    let mut kek = Zeroizing::new([0u8; KEK_LEN]);
    if plain.len() != KEK_LEN {
        return Err(HsmError::KeystoreCorrupt {
            defect: crate::SealedDefect::BadKeyMaterial,
        });
    }
    kek.copy_from_slice(&plain);
    Ok(kek)
}
