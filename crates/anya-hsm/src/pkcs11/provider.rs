//! [`HsmProvider`] for [`Pkcs11Hsm`].

use std::sync::MutexGuard;
use std::time::Duration;

use anya_core_types::UnixTime;
use bitcoin::bip32::{ChildNumber, DerivationPath};
use bitcoin::hashes::Hash;
use bitcoin::{NetworkKind, TapNodeHash};
use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use ring::rand::SecureRandom;
use secp256k1::{ecdsa, schnorr, XOnlyPublicKey};

use super::token::{self, ED25519_PARAMS, P256_PARAMS, SECP256K1_PARAMS};
use super::Pkcs11Hsm;
use crate::audit::{input_hash, AuditRecord, AuditSummary, Operation};
use crate::{
    AccountXpub, AuxRand, Capabilities, Capability, Ed25519Signature, ExportScope, HsmError, HsmProvider, KeyId,
    KeyInfo, KeyMaterial, KeyPolicy, KeyRef, KeySpec, Label, MnemonicLength, P256Signature, PublicKey, SecretBytes,
    SecretString, Usage,
};

const RECORD_VERSION: u8 = 1;
const GCM_IV_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;

fn encode_record(spec: KeySpec, policy: KeyPolicy, created: UnixTime) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION, spec.code()];
    out.extend_from_slice(&policy.allowed.bits().to_be_bytes());
    out.push(u8::from(policy.exportable));
    out.extend_from_slice(&created.as_secs().to_be_bytes());
    out
}

fn decode_record(id: KeyId, b: &[u8]) -> Option<KeyInfo> {
    let [RECORD_VERSION, spec, u0, u1, exportable, rest @ ..] = b else {
        return None;
    };
    let secs = u64::from_be_bytes(rest.try_into().ok()?);
    Some(KeyInfo {
        id,
        spec: KeySpec::from_code(*spec)?,
        policy: KeyPolicy {
            allowed: crate::UsageSet::from_bits(u16::from_be_bytes([*u0, *u1]))?,
            exportable: match exportable {
                0 => false,
                1 => true,
                _ => return None,
            },
        },
        created: UnixTime::from_duration(Duration::from_secs(secs)),
    })
}

impl Pkcs11Hsm {
    fn caps() -> Capabilities {
        [
            Capability::GenerateSecp256k1,
            Capability::GenerateEd25519,
            Capability::GenerateAes256,
            Capability::Import,
            Capability::Export,
            Capability::SignEcdsa,
            Capability::SignEd25519,
            Capability::Aes256Gcm,
            Capability::AuditLog,
            Capability::GenerateP256,
            Capability::SignP256,
        ]
        .into_iter()
        .fold(Capabilities::empty(), Capabilities::with)
    }

    fn session(&self) -> Result<MutexGuard<'_, Session>, HsmError> {
        self.inner.session.lock().map_err(|_| HsmError::Poisoned)
    }

    fn object_label(&self, id: &KeyId) -> Vec<u8> {
        format!("{}{}", self.inner.label_prefix, id.as_str()).into_bytes()
    }

    fn info(&self, id: &KeyId) -> Result<KeyInfo, HsmError> {
        let stored = self
            .inner
            .store
            .get(&self.inner.keys_ns, id.as_str().as_bytes())?
            .ok_or_else(|| HsmError::KeyNotFound { id: id.clone() })?;
        decode_record(id.clone(), &stored.value).ok_or_else(|| HsmError::SealedEntry {
            id: id.clone(),
            defect: crate::SealedDefect::BadHeader,
        })
    }

    /// The key's record if its spec can serve `usage` and its policy allows it.
    fn usable(&self, id: &KeyId, usage: Usage) -> Result<KeyInfo, HsmError> {
        let info = self.info(id)?;
        if !info.spec.possible_usages().contains(usage) {
            return Err(HsmError::WrongKeyType {
                id: id.clone(),
                spec: info.spec,
                usage,
            });
        }
        if !info.policy.allowed.contains(usage) {
            return Err(HsmError::UsageNotAllowed { id: id.clone(), usage });
        }
        Ok(info)
    }

    fn find(&self, session: &Session, id: &KeyId, class: ObjectClass) -> Result<ObjectHandle, HsmError> {
        let template = [Attribute::Class(class), Attribute::Label(self.object_label(id))];
        session
            .find_objects(&template)?
            .into_iter()
            .next()
            .ok_or_else(|| HsmError::KeyNotFound { id: id.clone() })
    }

    /// Creates the token objects with `make`, then the record; a record written meanwhile by
    /// another handle wins and the new objects are destroyed.
    fn create(
        &self,
        id: &KeyId,
        spec: KeySpec,
        policy: KeyPolicy,
        make: impl FnOnce(&Session, &[u8]) -> Result<(), HsmError>,
    ) -> Result<KeyInfo, HsmError> {
        let ns = &self.inner.keys_ns;
        if self.inner.store.get(ns, id.as_str().as_bytes())?.is_some() {
            return Err(HsmError::KeyExists { id: id.clone() });
        }
        let policy = KeyPolicy {
            allowed: policy.allowed.intersect(spec.possible_usages()),
            exportable: policy.exportable,
        };
        let label = self.object_label(id);
        {
            let session = self.session()?;
            if !session.find_objects(&[Attribute::Label(label.clone())])?.is_empty() {
                // Objects without a record: left by a crash between the two writes.
                return Err(HsmError::KeyExists { id: id.clone() });
            }
            make(&session, &label)?;
        }
        let created = self.inner.clock.now();
        let record = encode_record(spec, policy, created);
        match self
            .inner
            .store
            .compare_and_swap(ns, id.as_str().as_bytes(), None, Some(&record))
        {
            Ok(_) => Ok(KeyInfo {
                id: id.clone(),
                spec,
                policy,
                created: UnixTime::from_duration(Duration::from_secs(created.as_secs())),
            }),
            Err(e) => {
                self.destroy_objects(id)?;
                if e.is_conflict() {
                    Err(HsmError::KeyExists { id: id.clone() })
                } else {
                    Err(e.into())
                }
            }
        }
    }

    fn destroy_objects(&self, id: &KeyId) -> Result<(), HsmError> {
        let session = self.session()?;
        for object in session.find_objects(&[Attribute::Label(self.object_label(id))])? {
            session.destroy_object(object)?;
        }
        Ok(())
    }

    fn generate(&self, id: &KeyId, spec: KeySpec, policy: KeyPolicy) -> Result<KeyInfo, HsmError> {
        let capability = match spec {
            KeySpec::Secp256k1 => Capability::GenerateSecp256k1,
            KeySpec::Ed25519 => Capability::GenerateEd25519,
            KeySpec::Aes256 => Capability::GenerateAes256,
            KeySpec::Bip32Root => Capability::Bip32,
            KeySpec::P256 => Capability::GenerateP256,
        };
        Self::caps().require(capability)?;
        self.create(id, spec, policy, |session, label| {
            match spec {
                KeySpec::Aes256 => {
                    session.generate_key(&Mechanism::AesKeyGen, &token::aes_template(label, policy, None))?;
                }
                _ => {
                    let mechanism = match spec {
                        KeySpec::Ed25519 => Mechanism::EccEdwardsKeyPairGen,
                        _ => Mechanism::EccKeyPairGen,
                    };
                    session.generate_key_pair(
                        &mechanism,
                        &token::public_template(label, spec, None),
                        &token::private_template(label, spec, policy, None),
                    )?;
                }
            }
            Ok(())
        })
    }

    fn import(&self, id: &KeyId, material: KeyMaterial, policy: KeyPolicy) -> Result<KeyInfo, HsmError> {
        Self::caps().require(Capability::Import)?;
        let spec = material.spec();
        let invalid = || HsmError::InvalidKeyMaterial { spec };
        match material {
            KeyMaterial::Secp256k1(secret) => {
                let sk = secp256k1::SecretKey::from_slice(secret.expose()).map_err(|_| invalid())?;
                let point = sk.public_key(&self.inner.secp).serialize_uncompressed();
                self.create(id, spec, policy, |session, label| {
                    create_pair(
                        session,
                        &token::public_template(label, spec, Some(&point)),
                        &token::private_template(label, spec, policy, Some(secret.expose())),
                    )
                })
            }
            KeyMaterial::Ed25519(seed) => {
                let pair =
                    ring::signature::Ed25519KeyPair::from_seed_unchecked(seed.expose()).map_err(|_| invalid())?;
                let point = ring::signature::KeyPair::public_key(&pair).as_ref().to_vec();
                self.create(id, spec, policy, |session, label| {
                    create_pair(
                        session,
                        &token::public_template(label, spec, Some(&point)),
                        &token::private_template(label, spec, policy, Some(seed.expose())),
                    )
                })
            }
            KeyMaterial::P256Pkcs8(doc) => {
                let rng = ring::rand::SystemRandom::new();
                let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    doc.expose(),
                    &rng,
                )
                .map_err(|_| invalid())?;
                let scalar = crate::p256::pkcs8_scalar(doc.expose()).ok_or_else(invalid)?;
                let point = ring::signature::KeyPair::public_key(&pair).as_ref().to_vec();
                self.create(id, spec, policy, |session, label| {
                    create_pair(
                        session,
                        &token::public_template(label, spec, Some(&point)),
                        &token::private_template(label, spec, policy, Some(scalar)),
                    )
                })
            }
            KeyMaterial::Aes256(key) => {
                if key.len() != 32 {
                    return Err(invalid());
                }
                self.create(id, spec, policy, |session, label| {
                    session.create_object(&token::aes_template(label, policy, Some(key.expose())))?;
                    Ok(())
                })
            }
            _ => Err(HsmError::Unsupported {
                capability: Capability::Bip32,
            }),
        }
    }

    fn export(&self, id: &KeyId) -> Result<SecretBytes, HsmError> {
        Self::caps().require(Capability::Export)?;
        let info = self.info(id)?;
        if !info.policy.exportable {
            return Err(HsmError::NotExportable { id: id.clone() });
        }
        let class = match info.spec {
            KeySpec::Aes256 => ObjectClass::SECRET_KEY,
            _ => ObjectClass::PRIVATE_KEY,
        };
        let raw = self.export_value(id, class)?;
        if info.spec != KeySpec::P256 {
            return Ok(raw);
        }
        // A P-256 key leaves as the PKCS#8 document that `import_key` takes.
        let PublicKey::P256(point) = self.public(KeyRef::Key(id))? else {
            return Err(HsmError::Crypto {
                what: "token public key does not match its record",
            });
        };
        let scalar: &[u8; 32] = raw.expose().try_into().expect("export values are padded to 32 bytes");
        let doc = crate::p256::pkcs8_from_parts(scalar, &point);
        let rng = ring::rand::SystemRandom::new();
        ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &doc, &rng)
            .map_err(|_| HsmError::Crypto {
                what: "token p-256 private and public keys do not match",
            })?;
        Ok(SecretBytes::from_slice(&doc))
    }

    /// `CKA_VALUE` of the key's object of `class`, as 32 bytes.
    fn export_value(&self, id: &KeyId, class: ObjectClass) -> Result<SecretBytes, HsmError> {
        let session = self.session()?;
        let object = self.find(&session, id, class)?;
        let value = session
            .get_attributes(object, &[AttributeType::Value])?
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(zeroize::Zeroizing::new(v)),
                _ => None,
            })
            .ok_or(HsmError::Crypto {
                what: "token returned no key value",
            })?;
        // EC private values are big-endian integers that a module may shorten; Ed25519 ones
        // may come as an OCTET STRING.
        let bytes = token::unwrap_octet_string(&value, 32).unwrap_or(&value);
        if bytes.len() > 32 {
            return Err(HsmError::Crypto {
                what: "token key value is longer than 32 bytes",
            });
        }
        let mut out = vec![0u8; 32 - bytes.len()];
        out.extend_from_slice(bytes);
        Ok(SecretBytes::new(out))
    }

    fn public(&self, key: KeyRef<'_>) -> Result<PublicKey, HsmError> {
        let KeyRef::Key(id) = key else {
            return Err(HsmError::Unsupported {
                capability: Capability::Bip32,
            });
        };
        let info = self.info(id)?;
        let len = match info.spec {
            KeySpec::Secp256k1 | KeySpec::P256 => 65,
            KeySpec::Ed25519 => 32,
            spec => {
                return Err(HsmError::WrongKeyType {
                    id: id.clone(),
                    spec,
                    usage: Usage::SignEcdsa,
                })
            }
        };
        let session = self.session()?;
        let object = self.find(&session, id, ObjectClass::PUBLIC_KEY)?;
        let attrs = session.get_attributes(object, &[AttributeType::EcPoint, AttributeType::EcParams])?;
        let (mut point, mut params) = (None, None);
        for a in attrs {
            match a {
                Attribute::EcPoint(p) => point = Some(p),
                Attribute::EcParams(p) => params = Some(p),
                _ => {}
            }
        }
        let bad = HsmError::Crypto {
            what: "token public key does not match its record",
        };
        let (Some(point), Some(params)) = (point, params) else {
            return Err(bad);
        };
        let expected: &[u8] = match info.spec {
            KeySpec::Ed25519 => &ED25519_PARAMS,
            KeySpec::P256 => &P256_PARAMS,
            _ => &SECP256K1_PARAMS,
        };
        // SoftHSM2 (and others) may name Ed25519 by the printable string "edwards25519".
        if params != expected && !(info.spec == KeySpec::Ed25519 && params.ends_with(b"edwards25519")) {
            return Err(bad);
        }
        let raw = token::unwrap_octet_string(&point, len).ok_or(HsmError::Crypto {
            what: "token public key does not match its record",
        })?;
        match info.spec {
            KeySpec::Ed25519 => Ok(PublicKey::Ed25519(raw.try_into().expect("checked to be 32 bytes"))),
            // Uncompressed SEC1; the curve equation is checked by whoever verifies with it.
            KeySpec::P256 if raw[0] == 0x04 => Ok(PublicKey::P256(raw.try_into().expect("checked to be 65 bytes"))),
            KeySpec::P256 => Err(bad),
            _ => secp256k1::PublicKey::from_slice(raw)
                .map(PublicKey::Secp256k1)
                .map_err(|_| bad),
        }
    }

    fn ecdsa(&self, key: KeyRef<'_>, digest: &[u8; 32]) -> Result<ecdsa::Signature, HsmError> {
        Self::caps().require(Capability::SignEcdsa)?;
        let KeyRef::Key(id) = key else {
            return Err(HsmError::Unsupported {
                capability: Capability::Bip32,
            });
        };
        self.usable(id, Usage::SignEcdsa)?;
        let session = self.session()?;
        let object = self.find(&session, id, ObjectClass::PRIVATE_KEY)?;
        let raw = session.sign(&Mechanism::Ecdsa, object, digest)?;
        // CKM_ECDSA returns r ‖ s, each 32 bytes; tokens pick s of either sign, and Bitcoin
        // accepts only the low one.
        let mut sig = ecdsa::Signature::from_compact(&raw).map_err(|_| HsmError::Crypto {
            what: "token ecdsa signature is not r || s",
        })?;
        sig.normalize_s();
        Ok(sig)
    }

    fn ed25519(&self, id: &KeyId, message: &[u8]) -> Result<Ed25519Signature, HsmError> {
        Self::caps().require(Capability::SignEd25519)?;
        self.usable(id, Usage::SignEd25519)?;
        let session = self.session()?;
        let object = self.find(&session, id, ObjectClass::PRIVATE_KEY)?;
        let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        let raw = session.sign(&mechanism, object, message)?;
        raw.try_into().map(Ed25519Signature).map_err(|_| HsmError::Crypto {
            what: "token ed25519 signature is not 64 bytes",
        })
    }

    fn p256(&self, id: &KeyId, message: &[u8]) -> Result<P256Signature, HsmError> {
        Self::caps().require(Capability::SignP256)?;
        self.usable(id, Usage::SignP256)?;
        // CKM_ECDSA signs a digest; hashing on the host keeps the message off the token and
        // works with tokens that lack CKM_ECDSA_SHA256.
        let digest = bitcoin::hashes::sha256::Hash::hash(message).to_byte_array();
        let session = self.session()?;
        let object = self.find(&session, id, ObjectClass::PRIVATE_KEY)?;
        let raw = session.sign(&Mechanism::Ecdsa, object, &digest)?;
        raw.try_into().map(P256Signature).map_err(|_| HsmError::Crypto {
            what: "token p-256 signature is not r || s",
        })
    }

    fn seal(&self, id: &KeyId, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, HsmError> {
        Self::caps().require(Capability::Aes256Gcm)?;
        self.usable(id, Usage::Encrypt)?;
        let mut iv = [0u8; GCM_IV_LEN];
        self.inner.rng.fill(&mut iv).map_err(|_| HsmError::Random)?;
        let session = self.session()?;
        let object = self.find(&session, id, ObjectClass::SECRET_KEY)?;
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, aad, (GCM_TAG_LEN as u64 * 8).into())?;
        let sealed = session.encrypt(&Mechanism::AesGcm(params), object, plaintext)?;
        let mut out = Vec::with_capacity(GCM_IV_LEN + sealed.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn unseal(&self, id: &KeyId, sealed: &[u8], aad: &[u8]) -> Result<SecretBytes, HsmError> {
        Self::caps().require(Capability::Aes256Gcm)?;
        self.usable(id, Usage::Decrypt)?;
        if sealed.len() < GCM_IV_LEN + GCM_TAG_LEN {
            return Err(HsmError::DecryptionFailed);
        }
        let (iv, body) = sealed.split_at(GCM_IV_LEN);
        let mut iv: [u8; GCM_IV_LEN] = iv.try_into().expect("split at the iv length");
        let session = self.session()?;
        let object = self.find(&session, id, ObjectClass::SECRET_KEY)?;
        let params = GcmParams::new(&mut iv, aad, (GCM_TAG_LEN as u64 * 8).into())?;
        match session.decrypt(&Mechanism::AesGcm(params), object, body) {
            Ok(plain) => Ok(SecretBytes::new(plain)),
            // A tag that does not authenticate: modules answer with one of these, SoftHSM2
            // with CKR_GENERAL_ERROR from C_Decrypt itself (after C_DecryptInit succeeded), so a
            // device lost between those two calls is reported as a failed decryption too.
            Err(CkError::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::FunctionFailed
                | RvError::GeneralError,
                Function::Decrypt,
            )) => Err(HsmError::DecryptionFailed),
            Err(e) => Err(e.into()),
        }
    }
}

fn create_pair(session: &Session, public: &[Attribute], private: &[Attribute]) -> Result<(), HsmError> {
    let public = session.create_object(public)?;
    if let Err(e) = session.create_object(private) {
        // Leave no half key behind; the creation error is the one to report.
        let _ = session.destroy_object(public);
        return Err(e.into());
    }
    Ok(())
}

fn unsupported<T>(capability: Capability) -> Result<T, HsmError> {
    Err(HsmError::Unsupported { capability })
}

impl HsmProvider for Pkcs11Hsm {
    fn capabilities(&self) -> Capabilities {
        Self::caps()
    }

    fn generate_key(&self, id: &KeyId, spec: KeySpec, policy: KeyPolicy) -> Result<KeyInfo, HsmError> {
        self.audited(Operation::GenerateKey, Some(id), None, || {
            self.generate(id, spec, policy)
        })
    }

    fn generate_mnemonic(
        &self,
        id: &KeyId,
        _length: MnemonicLength,
        _passphrase: &SecretString,
        _policy: KeyPolicy,
    ) -> Result<(KeyInfo, SecretString), HsmError> {
        self.audited(Operation::GenerateMnemonic, Some(id), None, || {
            unsupported(Capability::Bip32)
        })
    }

    fn import_key(&self, id: &KeyId, material: KeyMaterial, policy: KeyPolicy) -> Result<KeyInfo, HsmError> {
        self.audited(Operation::ImportKey, Some(id), None, || {
            self.import(id, material, policy)
        })
    }

    fn export_key(&self, id: &KeyId) -> Result<SecretBytes, HsmError> {
        self.audited(Operation::ExportKey, Some(id), None, || self.export(id))
    }

    fn key_info(&self, id: &KeyId) -> Result<KeyInfo, HsmError> {
        self.audited(Operation::KeyInfo, Some(id), None, || self.info(id))
    }

    fn list_keys(&self) -> Result<Vec<KeyInfo>, HsmError> {
        self.audited(Operation::ListKeys, None, None, || {
            // The records are in the store, but the list is only true while the token is there:
            // touching the session makes a lost token, closed session or finalized module an
            // error here, so `FailoverHsm::health_check` does not take a dead token for healthy.
            self.session()?.get_session_info()?;
            let entries = self.inner.store.scan(&self.inner.keys_ns, anya_storage::Scan::all())?;
            entries
                .into_iter()
                .map(|e| {
                    let id = std::str::from_utf8(&e.key)
                        .ok()
                        .and_then(|s| Label::new(s).ok())
                        .ok_or(HsmError::KeystoreCorrupt {
                            defect: crate::SealedDefect::BadHeader,
                        })?;
                    decode_record(id.clone(), &e.value).ok_or(HsmError::SealedEntry {
                        id,
                        defect: crate::SealedDefect::BadHeader,
                    })
                })
                .collect()
        })
    }

    fn delete_key(&self, id: &KeyId) -> Result<(), HsmError> {
        self.audited(Operation::DeleteKey, Some(id), None, || {
            self.info(id)?;
            self.destroy_objects(id)?;
            self.inner.store.delete(&self.inner.keys_ns, id.as_str().as_bytes())?;
            Ok(())
        })
    }

    fn public_key(&self, key: KeyRef<'_>) -> Result<PublicKey, HsmError> {
        self.audited(Operation::PublicKey, Some(key.id()), None, || self.public(key))
    }

    fn sign_ecdsa(&self, key: KeyRef<'_>, digest: &[u8; 32]) -> Result<ecdsa::Signature, HsmError> {
        self.audited(Operation::SignEcdsa, Some(key.id()), Some(input_hash(digest)), || {
            self.ecdsa(key, digest)
        })
    }

    fn sign_schnorr(
        &self,
        key: KeyRef<'_>,
        message: &[u8; 32],
        _aux_rand: AuxRand,
    ) -> Result<schnorr::Signature, HsmError> {
        self.audited(
            Operation::SignSchnorr,
            Some(key.id()),
            Some(input_hash(message)),
            || unsupported(Capability::SignSchnorr),
        )
    }

    fn sign_taproot_key_spend(
        &self,
        key: KeyRef<'_>,
        sighash: &[u8; 32],
        _merkle_root: Option<TapNodeHash>,
        _aux_rand: AuxRand,
    ) -> Result<schnorr::Signature, HsmError> {
        self.audited(
            Operation::SignTaprootKeySpend,
            Some(key.id()),
            Some(input_hash(sighash)),
            || unsupported(Capability::SignTaprootKeySpend),
        )
    }

    fn sign_ed25519(&self, id: &KeyId, message: &[u8]) -> Result<Ed25519Signature, HsmError> {
        self.audited(Operation::SignEd25519, Some(id), Some(input_hash(message)), || {
            self.ed25519(id, message)
        })
    }

    fn sign_p256(&self, id: &KeyId, message: &[u8]) -> Result<P256Signature, HsmError> {
        self.audited(Operation::SignP256, Some(id), Some(input_hash(message)), || {
            self.p256(id, message)
        })
    }

    fn encrypt(&self, id: &KeyId, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, HsmError> {
        let result = self.seal(id, plaintext, aad);
        // The record hashes the ciphertext produced, never the plaintext.
        let hash = result.as_ref().ok().map(|ct| input_hash(ct));
        self.record(Operation::Encrypt, Some(id), hash, &result)?;
        result
    }

    fn decrypt(&self, id: &KeyId, sealed: &[u8], aad: &[u8]) -> Result<SecretBytes, HsmError> {
        self.audited(Operation::Decrypt, Some(id), Some(input_hash(sealed)), || {
            self.unseal(id, sealed, aad)
        })
    }

    fn account_xpub(
        &self,
        root: &KeyId,
        _path: &DerivationPath,
        _network: NetworkKind,
    ) -> Result<AccountXpub, HsmError> {
        self.audited(Operation::AccountXpub, Some(root), None, || {
            unsupported(Capability::Bip32)
        })
    }

    fn export_scoped_child(
        &self,
        root: &KeyId,
        scope: ExportScope,
        path: &[ChildNumber],
    ) -> Result<SecretBytes, HsmError> {
        // No token derives BIP32 children, so there is no root to export a child of.
        self.audited(
            Operation::ExportScopedChild,
            Some(root),
            Some(scope.audit_input_hash(path)),
            || unsupported(Capability::Bip32),
        )
    }

    fn derive_node_seed(&self, root: &KeyId, index: u32) -> Result<SecretBytes, HsmError> {
        // No token derives BIP32 children, so there is no root to derive a node seed from.
        self.audited(
            Operation::DeriveNodeSeed,
            Some(root),
            Some(crate::node_seed::audit_input_hash(index)),
            || unsupported(Capability::Bip32),
        )
    }

    fn commit_nonce(&self, key: &KeyId, _nonce: &Label) -> Result<XOnlyPublicKey, HsmError> {
        self.audited(Operation::CommitNonce, Some(key), None, || {
            unsupported(Capability::OracleNonces)
        })
    }

    fn sign_with_nonce(&self, key: &KeyId, _nonce: &Label, message: &[u8; 32]) -> Result<schnorr::Signature, HsmError> {
        self.audited(Operation::SignWithNonce, Some(key), Some(input_hash(message)), || {
            unsupported(Capability::OracleNonces)
        })
    }

    fn record_decision(&self, key: Option<&KeyId>, subject: &[u8; 32], outcome: u16) -> Result<(), HsmError> {
        self.inner.audit.record_decision(&self.actor, key, subject, outcome)
    }

    fn flush_audit(&self) -> Result<(), HsmError> {
        self.inner.audit.flush()
    }

    fn audit_records(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, HsmError> {
        self.inner.audit.records(after, limit)
    }

    fn verify_audit_chain(&self) -> Result<AuditSummary, HsmError> {
        self.inner.audit.verify()
    }
}
