//! Envelope mode: the keystore KEK is random and wrapped by an AES-256 key on a PKCS#11 token,
//! so the keys no token can use (BIP340, Taproot, BIP32) are protected at rest by the token.

use std::sync::Arc;

use crate::software::seal::Kek;
use anya_storage::KvStore;
use zeroize::Zeroizing;

use super::seal::{self, KekOrigin, Meta, MAX_KEY_LABEL_LEN, MECHANISM_AES_GCM};
use super::{SoftwareHsm, SoftwareOptions};
use crate::audit::Operation;
use crate::error::SealedDefect;
use crate::pkcs11::envelope::{unwrap_kek, wrap_kek};
use crate::{HsmError, Pkcs11Options};

/// Suffix of the token key's `CKA_LABEL` after the options' label prefix.
const TOKEN_KEY_SUFFIX: &str = "keystore-kek";

fn aes_key(kek: &[u8; 32]) -> Result<Kek, HsmError> {
    Kek::from_bytes(kek)
}

impl SoftwareHsm {
    /// Creates a new, empty keystore in `store` whose KEK is a fresh random key wrapped by the
    /// AES-256 key `<label_prefix>keystore-kek` on the token `token` names (generated there,
    /// sensitive and not extractable, if the token has none), and returns it unlocked.
    ///
    /// The header records the token key's label and the mechanism (`CKM_AES_GCM`); the
    /// plaintext KEK is never stored. `options.kdf` is not used. [`HsmError::KeystoreExists`]
    /// if the namespaces already hold a keystore.
    pub fn create_enveloped(
        store: Arc<dyn KvStore>,
        token: &Pkcs11Options,
        options: SoftwareOptions,
    ) -> Result<Self, HsmError> {
        let hsm = Self::build(store, &options)?;
        hsm.inner.audit.check_anchor()?;
        let result = hsm.create_enveloped_keystore(token);
        hsm.record(Operation::Create, None, None, &result)?;
        result.map(|()| hsm)
    }

    fn create_enveloped_keystore(&self, token: &Pkcs11Options) -> Result<(), HsmError> {
        let inner = &self.inner;
        self.ensure_no_keystore()?;
        let key_label = format!("{}{TOKEN_KEY_SUFFIX}", token.label_prefix).into_bytes();
        if key_label.len() > MAX_KEY_LABEL_LEN {
            return Err(HsmError::KeystoreCorrupt {
                defect: SealedDefect::BadHeader,
            });
        }
        let kek_bytes = Zeroizing::new(seal::random::<32>(&inner.rng)?);
        let wrapped = wrap_kek(token, &inner.rng, &key_label, &kek_bytes)?;
        let kek = aes_key(&kek_bytes)?;
        let origin = KekOrigin::Token {
            key_label,
            mechanism: MECHANISM_AES_GCM,
            wrapped,
        };
        let meta = Meta::new(&kek.aead, &inner.rng, origin)?;
        self.install(&meta, kek)
    }

    /// Unlocks an enveloped keystore: logs in to the token `token` names (on the process's
    /// shared session) and has its key, named in the header, unwrap the KEK.
    ///
    /// The options' label prefix is not used: the header names the key. A keystore sealed
    /// under a passphrase is [`HsmError::KekSourceMismatch`]; a token without the key is
    /// [`HsmError::TokenKekNotFound`]; a key that does not authenticate the wrapped KEK (another
    /// token's key, an altered header) is [`HsmError::KekUnwrapFailed`] or
    /// [`HsmError::KeystoreCorrupt`]. Each leaves the keystore locked.
    pub fn unlock_enveloped(&self, token: &Pkcs11Options) -> Result<(), HsmError> {
        let result = self.unlock_enveloped_inner(token);
        self.record(Operation::Unlock, None, None, &result)?;
        result
    }

    fn unlock_enveloped_inner(&self, token: &Pkcs11Options) -> Result<(), HsmError> {
        self.inner.audit.check_anchor()?;
        let meta = self.meta()?;
        let KekOrigin::Token {
            key_label,
            mechanism,
            wrapped,
        } = &meta.origin
        else {
            return Err(HsmError::KekSourceMismatch {
                keystore: meta.origin.kind(),
            });
        };
        if *mechanism != MECHANISM_AES_GCM {
            return Err(HsmError::KeystoreCorrupt {
                defect: SealedDefect::BadHeader,
            });
        }
        let kek_bytes = unwrap_kek(token, key_label, wrapped)?;
        let kek = aes_key(&kek_bytes)?;
        if !meta.check(&kek.aead) {
            return Err(HsmError::KeystoreCorrupt {
                defect: SealedDefect::AuthenticationFailed,
            });
        }
        self.set_unlocked(kek)
    }
}
