//! `HsmProvider` for `SoftwareHsm`.

use std::sync::Arc;

use anya_core_types::Label;
use anya_storage::Scan;
use bitcoin::bip32::{ChainCode, ChildNumber, DerivationPath, Xpriv, Xpub};
use bitcoin::hashes::{sha512, Hash, HashEngine, Hmac, HmacEngine};
use bitcoin::key::TapTweak;
use bitcoin::{NetworkKind, TapNodeHash};
use secp256k1::{ecdsa, schnorr, Keypair, Message, Scalar, SecretKey, XOnlyPublicKey};
use zeroize::Zeroizing;

use super::material::{HdRoot, Material, SecretKeypair, SecretXpriv, UnsealedKey};
use super::seal::{self, EntryHeader};
use super::{nonce, SoftwareHsm};
use crate::audit::{input_hash, AuditRecord, AuditSummary, Operation};
use crate::error::SealedDefect;
use crate::provider::KeyMaterial;
use crate::{
    AccountXpub, AuxRand, Capabilities, Ed25519Signature, ExportScope, HsmError, HsmProvider, KeyId, KeyInfo,
    KeyPolicy, KeyRef, KeySpec, MnemonicLength, P256Signature, PublicKey, SecretBytes, SecretString, Usage,
};

/// A secp256k1 key pair borrowed from the cache or derived for one call.
enum Signer<'a> {
    Cached(&'a Keypair),
    Derived(SecretKeypair),
}

impl Signer<'_> {
    fn keypair(&self) -> &Keypair {
        match self {
            Signer::Cached(kp) => kp,
            Signer::Derived(kp) => &kp.0,
        }
    }
}

fn info(key: &UnsealedKey) -> KeyInfo {
    KeyInfo {
        id: (*key.id).clone(),
        spec: key.header.spec,
        policy: key.header.policy,
        created: key.header.created,
    }
}

/// The key pair at `path` below `hd`.
///
/// The part up to the last hardened step comes from the root's account cache; the unhardened
/// tail (BIP86's `0/i`) is derived here by BIP32 CKDpriv. `Xpriv::derive_priv` would also
/// compute each parent's fingerprint — one more EC multiplication per step that signing does
/// not need — so this costs two fewer multiplications than bare rust-bitcoin for a BIP86 path.
fn derive_keypair(
    secp: &secp256k1::Secp256k1<secp256k1::All>,
    hd: &HdRoot,
    path: &[ChildNumber],
) -> Result<SecretKeypair, HsmError> {
    let split = path.iter().rposition(ChildNumber::is_hardened).map_or(0, |i| i + 1);
    let (prefix, tail) = path.split_at(split);
    let base = hd.derive_xpriv(secp, prefix)?;
    let mut sk = base.0.private_key;
    let mut chain_code = base.0.chain_code;
    for child in tail {
        let ChildNumber::Normal { index } = *child else {
            unreachable!("the tail after the last hardened step is unhardened")
        };
        let parent = secp256k1::PublicKey::from_secret_key(secp, &sk);
        let mut engine: HmacEngine<sha512::Hash> = HmacEngine::new(chain_code.as_bytes());
        engine.input(&parent.serialize());
        engine.input(&index.to_be_bytes());
        let i = Zeroizing::new(Hmac::<sha512::Hash>::from_engine(engine).to_byte_array());
        let (il, ir) = i.split_at(32);
        let il: [u8; 32] = il.try_into().expect("32 of 64 bytes");
        let ir: [u8; 32] = ir.try_into().expect("32 of 64 bytes");
        // BIP32: IL >= n or a zero child makes this index invalid.
        let tweak = Scalar::from_be_bytes(il).map_err(|_| HsmError::Crypto {
            what: "bip32 child index is invalid (IL >= n)",
        })?;
        let child_sk = sk.add_tweak(&tweak).map_err(|_| HsmError::Crypto {
            what: "bip32 child index is invalid (zero key)",
        });
        sk.non_secure_erase();
        sk = child_sk?;
        chain_code = ChainCode::from(ir);
    }
    let keypair = SecretKeypair(Keypair::from_secret_key(secp, &sk));
    sk.non_secure_erase();
    Ok(keypair)
}

fn hd_root(secp: &secp256k1::Secp256k1<secp256k1::All>, xpriv: Xpriv) -> Material {
    let fingerprint = xpriv.fingerprint(secp);
    Material::Bip32(Box::new(HdRoot::new(SecretXpriv(xpriv), fingerprint)))
}

impl SoftwareHsm {
    fn check_usage(key: &UnsealedKey, usage: Usage) -> Result<(), HsmError> {
        if !key.header.spec.possible_usages().contains(usage) {
            return Err(HsmError::WrongKeyType {
                id: (*key.id).clone(),
                spec: key.header.spec,
                usage,
            });
        }
        if !key.header.policy.allowed.contains(usage) {
            return Err(HsmError::UsageNotAllowed {
                id: (*key.id).clone(),
                usage,
            });
        }
        Ok(())
    }

    /// The secp256k1 signer for `key_ref` after the type and policy checks for `usage`.
    fn signer<'k>(&self, key: &'k UnsealedKey, key_ref: KeyRef<'_>, usage: Usage) -> Result<Signer<'k>, HsmError> {
        Self::check_usage(key, usage)?;
        let wrong = || HsmError::WrongKeyType {
            id: (*key.id).clone(),
            spec: key.header.spec,
            usage,
        };
        match (&key.material, key_ref) {
            (Material::Secp256k1(kp), KeyRef::Key(_)) => Ok(Signer::Cached(&kp.0)),
            (Material::Bip32(hd), KeyRef::Key(_)) => Ok(Signer::Derived(derive_keypair(&self.inner.secp, hd, &[])?)),
            (Material::Bip32(hd), KeyRef::Derived { path, .. }) => {
                Ok(Signer::Derived(derive_keypair(&self.inner.secp, hd, path)?))
            }
            _ => Err(wrong()),
        }
    }

    fn aux(&self, aux_rand: AuxRand) -> Result<[u8; 32], HsmError> {
        match aux_rand {
            AuxRand::Given(a) => Ok(a),
            AuxRand::Fresh => seal::random::<32>(&self.inner.rng),
        }
    }

    /// Seals and stores a new key; returns it and the digest of its sealed entry (recorded in
    /// the audit chain, which is how a later load knows the entry is this one).
    fn new_key(
        &self,
        id: &KeyId,
        spec: KeySpec,
        policy: KeyPolicy,
        material: Material,
    ) -> Result<(KeyInfo, [u8; 32]), HsmError> {
        let inner = &self.inner;
        let policy = KeyPolicy {
            allowed: policy.allowed.intersect(spec.possible_usages()),
            ..policy
        };
        let header = EntryHeader {
            spec,
            policy,
            created: inner.audit.now(),
        };
        let secret = material.secret_bytes();
        let bytes = self.with_kek(|kek| seal::seal_entry(kek, &inner.rng, id.as_str(), &header, &secret))?;
        match inner
            .store
            .compare_and_swap(&inner.keys_ns, id.as_str().as_bytes(), None, Some(&bytes))
        {
            Ok(_) => {}
            Err(e) if e.is_conflict() => return Err(HsmError::KeyExists { id: id.clone() }),
            Err(e) => return Err(e.into()),
        }
        let key = Arc::new(UnsealedKey {
            id: Arc::new(id.clone()),
            header,
            material,
        });
        let info = info(&key);
        self.remember(key)?;
        Ok((info, seal::entry_digest(&bytes)))
    }

    fn generate_material(&self, spec: KeySpec) -> Result<Material, HsmError> {
        let inner = &self.inner;
        if spec == KeySpec::P256 {
            return Material::generate_p256(&inner.rng);
        }
        loop {
            let bytes = Zeroizing::new(seal::random::<32>(&inner.rng)?);
            let material = match spec {
                KeySpec::Bip32Root => hd_root(&inner.secp, Xpriv::new_master(NetworkKind::Main, bytes.as_ref())?),
                _ => match Material::from_secret(&inner.secp, spec, bytes.as_ref()) {
                    Some(m) => m,
                    // A secp256k1 draw outside [1, n-1]: draw again.
                    None => continue,
                },
            };
            return Ok(material);
        }
    }

    fn import_material(&self, material: KeyMaterial) -> Result<Material, HsmError> {
        let secp = &self.inner.secp;
        let spec = material.spec();
        let invalid = || HsmError::InvalidKeyMaterial { spec };
        match material {
            KeyMaterial::Secp256k1(s)
            | KeyMaterial::Ed25519(s)
            | KeyMaterial::Aes256(s)
            | KeyMaterial::P256Pkcs8(s) => Material::from_secret(secp, spec, s.expose()).ok_or_else(invalid),
            KeyMaterial::Bip32Seed(seed) => {
                if !(16..=64).contains(&seed.len()) {
                    return Err(invalid());
                }
                Ok(hd_root(secp, Xpriv::new_master(NetworkKind::Main, seed.expose())?))
            }
            KeyMaterial::Bip39 { mnemonic, passphrase } => {
                let m = bip39::Mnemonic::parse_in(bip39::Language::English, mnemonic.expose())?;
                let seed = Zeroizing::new(m.to_seed(passphrase.expose()));
                Ok(hd_root(secp, Xpriv::new_master(NetworkKind::Main, seed.as_ref())?))
            }
            KeyMaterial::Xpriv(s) => Ok(hd_root(secp, crate::bip32::parse_xpriv(s.expose())?)),
        }
    }

    fn encrypt_inner(&self, id: &KeyId, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, HsmError> {
        let key = self.key(id)?;
        Self::check_usage(&key, Usage::Encrypt)?;
        let Material::Aes256 { key: aes, .. } = &key.material else {
            return Err(HsmError::WrongKeyType {
                id: id.clone(),
                spec: key.header.spec,
                usage: Usage::Encrypt,
            });
        };
        seal::seal(aes, &self.inner.rng, aad, plaintext)
    }

    fn sign_nonce_inner(
        &self,
        key_id: &KeyId,
        nonce_id: &Label,
        digest: &[u8; 32],
        message: &[u8; 32],
    ) -> Result<schnorr::Signature, HsmError> {
        let inner = &self.inner;
        let key = self.key(key_id)?;
        Self::check_usage(&key, Usage::OracleNonce)?;
        let Material::Secp256k1(kp) = &key.material else {
            return Err(HsmError::WrongKeyType {
                id: key_id.clone(),
                spec: key.header.spec,
                usage: Usage::OracleNonce,
            });
        };
        let store_key = nonce::store_key(key_id.as_str(), nonce_id.as_str());
        let not_found = || HsmError::NonceNotFound {
            key: key_id.clone(),
            nonce: nonce_id.clone(),
        };
        let used = || HsmError::NonceAlreadyUsed {
            key: key_id.clone(),
            nonce: nonce_id.clone(),
        };
        let corrupt = |defect| HsmError::SealedEntry {
            id: nonce_id.clone(),
            defect,
        };
        // With an anchor: the store must not be behind it, and a nonce it holds as consumed
        // signs only the message it was consumed for, whatever the store says.
        let anchor = inner.audit.anchor();
        // The chain records every signature a nonce made (before it was returned): a record put
        // back in the store cannot make it sign another message.
        if inner
            .audit
            .nonce_history(digest)?
            .signed
            .is_some_and(|h| h != input_hash(message))
        {
            return Err(used());
        }
        if let Some(anchor) = anchor {
            inner.audit.check_anchor()?;
            if anchor.consumed(digest)?.is_some_and(|m| m != *message) {
                return Err(used());
            }
        }
        // Recorded in the anchor before any signature leaves.
        let anchored = |signature: schnorr::Signature| match anchor {
            None => Ok(signature),
            Some(anchor) => match anchor.consume(digest, message) {
                Ok(()) => Ok(signature),
                Err(HsmError::AnchorNonceConflict) => Err(used()),
                Err(e) => Err(e),
            },
        };
        // Twice at most: a lost swap re-reads the record, which is then consumed.
        for _ in 0..2 {
            let stored = inner.store.get(&inner.nonces_ns, &store_key)?.ok_or_else(not_found)?;
            let (r, k) = match nonce::decode(&stored.value).map_err(corrupt)? {
                nonce::NonceRecord::Consumed {
                    r,
                    signed: Some((signed_message, signature)),
                } if signed_message == *message => {
                    // The same message again (a retry after a crash or a failed audit append):
                    // the same signature, checked before it is handed out.
                    let signature = nonce::check_signed(&inner.secp, &kp.0, &r, message, &signature)
                        .ok_or_else(|| corrupt(SealedDefect::AuthenticationFailed))?;
                    return anchored(signature);
                }
                nonce::NonceRecord::Consumed { .. } => return Err(used()),
                nonce::NonceRecord::Committed { r, sealed } => {
                    let aad = nonce::aad(key_id.as_str(), nonce_id.as_str(), &r);
                    let k = self.with_kek(|kek| seal::open(kek, &aad, sealed).map_err(corrupt))?;
                    let k: Zeroizing<[u8; 32]> = Zeroizing::new(
                        k.as_slice()
                            .try_into()
                            .map_err(|_| corrupt(SealedDefect::BadKeyMaterial))?,
                    );
                    (r, k)
                }
            };
            let signature = nonce::sign_with_k(&inner.secp, &kp.0, &k, message)?;
            // Consume, keeping the message and signature: only the caller whose swap lands
            // returns a signature, and only for this message.
            match inner.store.compare_and_swap(
                &inner.nonces_ns,
                &store_key,
                Some(stored.version),
                Some(&nonce::encode_signed(&r, message, &signature)),
            ) {
                Ok(_) => return anchored(signature),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(used())
    }
}

impl HsmProvider for SoftwareHsm {
    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    fn generate_key(&self, id: &KeyId, spec: KeySpec, policy: KeyPolicy) -> Result<KeyInfo, HsmError> {
        self.audited_subject(Operation::GenerateKey, Some(id), None, || {
            let material = self.generate_material(spec)?;
            self.new_key(id, spec, policy, material)
        })
    }

    fn generate_mnemonic(
        &self,
        id: &KeyId,
        length: MnemonicLength,
        passphrase: &SecretString,
        policy: KeyPolicy,
    ) -> Result<(KeyInfo, SecretString), HsmError> {
        self.audited_subject(Operation::GenerateMnemonic, Some(id), None, || {
            let mut entropy = Zeroizing::new([0u8; 32]);
            let entropy = &mut entropy[..length.entropy_bytes()];
            ring::rand::SecureRandom::fill(&self.inner.rng, entropy).map_err(|_| HsmError::Random)?;
            let mnemonic = bip39::Mnemonic::from_entropy(entropy)?;
            let seed = Zeroizing::new(mnemonic.to_seed(passphrase.expose()));
            let material = hd_root(&self.inner.secp, Xpriv::new_master(NetworkKind::Main, seed.as_ref())?);
            let (info, digest) = self.new_key(id, KeySpec::Bip32Root, policy, material)?;
            Ok(((info, SecretString::new(mnemonic.to_string())), digest))
        })
    }

    fn import_key(&self, id: &KeyId, material: KeyMaterial, policy: KeyPolicy) -> Result<KeyInfo, HsmError> {
        self.audited_subject(Operation::ImportKey, Some(id), None, || {
            let spec = material.spec();
            let material = self.import_material(material)?;
            self.new_key(id, spec, policy, material)
        })
    }

    fn export_key(&self, id: &KeyId) -> Result<SecretBytes, HsmError> {
        self.audited(Operation::ExportKey, Some(id), None, || {
            let key = self.key(id)?;
            if !key.header.policy.exportable {
                return Err(HsmError::NotExportable { id: id.clone() });
            }
            Ok(SecretBytes::from_slice(&key.material.secret_bytes()))
        })
    }

    fn key_info(&self, id: &KeyId) -> Result<KeyInfo, HsmError> {
        self.audited(Operation::KeyInfo, Some(id), None, || Ok(info(&*self.key(id)?)))
    }

    fn list_keys(&self) -> Result<Vec<KeyInfo>, HsmError> {
        self.audited(Operation::ListKeys, None, None, || {
            let inner = &self.inner;
            let entries = inner.store.scan(&inner.keys_ns, Scan::all())?;
            entries
                .iter()
                .map(|e| {
                    let id = std::str::from_utf8(&e.key)
                        .ok()
                        .and_then(|s| Label::new(s).ok())
                        .ok_or(HsmError::KeystoreCorrupt {
                            defect: SealedDefect::BadHeader,
                        })?;
                    Ok(info(&*self.key(&id)?))
                })
                .collect()
        })
    }

    fn delete_key(&self, id: &KeyId) -> Result<(), HsmError> {
        self.audited_subject(Operation::DeleteKey, Some(id), None, || {
            let inner = &self.inner;
            // Deleting needs the keystore unlocked, like every other key operation.
            self.with_kek(|_| Ok(()))?;
            let stored = inner
                .store
                .get(&inner.keys_ns, id.as_str().as_bytes())?
                .ok_or_else(|| HsmError::KeyNotFound { id: id.clone() })?;
            self.forget(id)?;
            match inner
                .store
                .compare_and_swap(&inner.keys_ns, id.as_str().as_bytes(), Some(stored.version), None)
            {
                // Tombstoned in the chain: the id's old entry can never be put back.
                Ok(_) => Ok(((), crate::audit::DELETED)),
                Err(e) if e.is_conflict() => Err(HsmError::KeyNotFound { id: id.clone() }),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn public_key(&self, key_ref: KeyRef<'_>) -> Result<PublicKey, HsmError> {
        self.audited(Operation::PublicKey, Some(key_ref.id()), None, || {
            let key = self.key(key_ref.id())?;
            match (&key.material, key_ref) {
                (Material::Secp256k1(kp), KeyRef::Key(_)) => Ok(PublicKey::Secp256k1(kp.0.public_key())),
                (Material::Ed25519 { pair, .. }, KeyRef::Key(_)) => {
                    let bytes: [u8; 32] = ring::signature::KeyPair::public_key(pair)
                        .as_ref()
                        .try_into()
                        .expect("ed25519 public keys are 32 bytes");
                    Ok(PublicKey::Ed25519(bytes))
                }
                (Material::P256 { pair, .. }, KeyRef::Key(_)) => {
                    let bytes: [u8; 65] = ring::signature::KeyPair::public_key(pair)
                        .as_ref()
                        .try_into()
                        .expect("p-256 public keys are 65-byte uncompressed points");
                    Ok(PublicKey::P256(bytes))
                }
                (Material::Bip32(hd), KeyRef::Key(_)) => {
                    Ok(PublicKey::Secp256k1(hd.derive(&self.inner.secp, &[])?.0.public_key()))
                }
                (Material::Bip32(hd), KeyRef::Derived { path, .. }) => {
                    Ok(PublicKey::Secp256k1(hd.derive(&self.inner.secp, path)?.0.public_key()))
                }
                _ => Err(HsmError::WrongKeyType {
                    id: (*key.id).clone(),
                    spec: key.header.spec,
                    usage: Usage::DeriveXpub,
                }),
            }
        })
    }

    fn sign_ecdsa(&self, key_ref: KeyRef<'_>, digest: &[u8; 32]) -> Result<ecdsa::Signature, HsmError> {
        self.audited(
            Operation::SignEcdsa,
            Some(key_ref.id()),
            Some(input_hash(digest)),
            || {
                let key = self.key(key_ref.id())?;
                let signer = self.signer(&key, key_ref, Usage::SignEcdsa)?;
                let sk = SecretKey::from_keypair(signer.keypair());
                Ok(self.inner.secp.sign_ecdsa(&Message::from_digest(*digest), &sk))
            },
        )
    }

    fn sign_schnorr(
        &self,
        key_ref: KeyRef<'_>,
        message: &[u8; 32],
        aux_rand: AuxRand,
    ) -> Result<schnorr::Signature, HsmError> {
        self.audited(
            Operation::SignSchnorr,
            Some(key_ref.id()),
            Some(input_hash(message)),
            || {
                let key = self.key(key_ref.id())?;
                let signer = self.signer(&key, key_ref, Usage::SignSchnorr)?;
                let aux = self.aux(aux_rand)?;
                Ok(self
                    .inner
                    .secp
                    .sign_schnorr_with_aux_rand(&Message::from_digest(*message), signer.keypair(), &aux))
            },
        )
    }

    fn sign_taproot_key_spend(
        &self,
        key_ref: KeyRef<'_>,
        sighash: &[u8; 32],
        merkle_root: Option<TapNodeHash>,
        aux_rand: AuxRand,
    ) -> Result<schnorr::Signature, HsmError> {
        self.audited(
            Operation::SignTaprootKeySpend,
            Some(key_ref.id()),
            Some(input_hash(sighash)),
            || {
                let key = self.key(key_ref.id())?;
                let signer = self.signer(&key, key_ref, Usage::SignTaprootKeySpend)?;
                let aux = self.aux(aux_rand)?;
                let tweaked = SecretKeypair(signer.keypair().tap_tweak(&self.inner.secp, merkle_root).to_keypair());
                Ok(self
                    .inner
                    .secp
                    .sign_schnorr_with_aux_rand(&Message::from_digest(*sighash), &tweaked.0, &aux))
            },
        )
    }

    fn sign_ed25519(&self, id: &KeyId, message: &[u8]) -> Result<Ed25519Signature, HsmError> {
        self.audited(Operation::SignEd25519, Some(id), Some(input_hash(message)), || {
            let key = self.key(id)?;
            Self::check_usage(&key, Usage::SignEd25519)?;
            let Material::Ed25519 { pair, .. } = &key.material else {
                return Err(HsmError::WrongKeyType {
                    id: id.clone(),
                    spec: key.header.spec,
                    usage: Usage::SignEd25519,
                });
            };
            let sig: [u8; 64] = pair
                .sign(message)
                .as_ref()
                .try_into()
                .expect("ed25519 signatures are 64 bytes");
            Ok(Ed25519Signature(sig))
        })
    }

    fn sign_p256(&self, id: &KeyId, message: &[u8]) -> Result<P256Signature, HsmError> {
        self.audited(Operation::SignP256, Some(id), Some(input_hash(message)), || {
            let key = self.key(id)?;
            Self::check_usage(&key, Usage::SignP256)?;
            let Material::P256 { pair, .. } = &key.material else {
                return Err(HsmError::WrongKeyType {
                    id: id.clone(),
                    spec: key.header.spec,
                    usage: Usage::SignP256,
                });
            };
            // ring hashes with SHA-256 and draws the nonce from `rng` mixed with the key.
            let sig = pair.sign(&self.inner.rng, message).map_err(|_| HsmError::Crypto {
                what: "p-256 signing failed",
            })?;
            let sig: [u8; 64] = sig.as_ref().try_into().expect("fixed p-256 signatures are 64 bytes");
            Ok(P256Signature(sig))
        })
    }

    fn encrypt(&self, id: &KeyId, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, HsmError> {
        // The record hashes the ciphertext produced, never the plaintext.
        let result = self.encrypt_inner(id, plaintext, aad);
        let hash = result.as_ref().ok().map(|ct| input_hash(ct));
        self.record(Operation::Encrypt, Some(id), hash, &result)?;
        result
    }

    fn decrypt(&self, id: &KeyId, sealed: &[u8], aad: &[u8]) -> Result<SecretBytes, HsmError> {
        self.audited(Operation::Decrypt, Some(id), Some(input_hash(sealed)), || {
            let key = self.key(id)?;
            Self::check_usage(&key, Usage::Decrypt)?;
            let Material::Aes256 { key: aes, .. } = &key.material else {
                return Err(HsmError::WrongKeyType {
                    id: id.clone(),
                    spec: key.header.spec,
                    usage: Usage::Decrypt,
                });
            };
            let mut plain = seal::open(aes, aad, sealed).map_err(|_| HsmError::DecryptionFailed)?;
            Ok(SecretBytes::new(std::mem::take(&mut *plain)))
        })
    }

    fn account_xpub(&self, root: &KeyId, path: &DerivationPath, network: NetworkKind) -> Result<AccountXpub, HsmError> {
        self.audited(Operation::AccountXpub, Some(root), None, || {
            let key = self.key(root)?;
            Self::check_usage(&key, Usage::DeriveXpub)?;
            let Material::Bip32(hd) = &key.material else {
                return Err(HsmError::WrongKeyType {
                    id: root.clone(),
                    spec: key.header.spec,
                    usage: Usage::DeriveXpub,
                });
            };
            let mut xpriv = hd.derive_xpriv(&self.inner.secp, path.as_ref())?;
            xpriv.0.network = network;
            let xpub = Xpub::from_priv(&self.inner.secp, &xpriv.0);
            Ok(AccountXpub {
                xpub,
                origin: (hd.fingerprint, path.clone()),
            })
        })
    }

    fn export_scoped_child(
        &self,
        root: &KeyId,
        scope: ExportScope,
        path: &[ChildNumber],
    ) -> Result<SecretBytes, HsmError> {
        self.audited(
            Operation::ExportScopedChild,
            Some(root),
            Some(scope.audit_input_hash(path)),
            || {
                // The path is checked before the key is touched: a refused path derives nothing.
                scope.child_path(path)?;
                let key = self.key(root)?;
                let usage = scope.usage();
                Self::check_usage(&key, usage)?;
                let Material::Bip32(hd) = &key.material else {
                    return Err(HsmError::WrongKeyType {
                        id: root.clone(),
                        spec: key.header.spec,
                        usage,
                    });
                };
                let secp = &self.inner.secp;
                // The branch key goes through the account cache (one entry per scope); each
                // child below it is derived for this call only, so that one-off per-contract
                // keys neither fill the cache nor stay in memory after the call.
                let branch = hd.derive_xpriv(secp, &[scope.branch()])?;
                let child = SecretXpriv(branch.0.derive_priv(secp, &path)?);
                let secret = Zeroizing::new(child.0.private_key.secret_bytes());
                Ok(SecretBytes::from_slice(secret.as_ref()))
            },
        )
    }

    fn derive_node_seed(&self, root: &KeyId, index: u32) -> Result<SecretBytes, HsmError> {
        self.audited(
            Operation::DeriveNodeSeed,
            Some(root),
            Some(crate::node_seed::audit_input_hash(index)),
            || {
                // The index is checked before the key is touched: a refused index derives nothing.
                let path = crate::node_seed::node_seed_path(index)?;
                let key = self.key(root)?;
                Self::check_usage(&key, Usage::DeriveNodeSeed)?;
                let Material::Bip32(hd) = &key.material else {
                    return Err(HsmError::WrongKeyType {
                        id: root.clone(),
                        spec: key.header.spec,
                        usage: Usage::DeriveNodeSeed,
                    });
                };
                // Derived for this call only (not through the account cache): the child is
                // wiped when this returns, and only the seed leaves.
                let child = SecretXpriv(hd.root.0.derive_priv(&self.inner.secp, &path)?);
                let k = Zeroizing::new(child.0.private_key.secret_bytes());
                Ok(crate::node_seed::entropy_from_k(&k))
            },
        )
    }

    fn commit_nonce(&self, key_id: &KeyId, nonce_id: &Label) -> Result<XOnlyPublicKey, HsmError> {
        self.audited_subject(Operation::CommitNonce, Some(key_id), None, || {
            let inner = &self.inner;
            let key = self.key(key_id)?;
            Self::check_usage(&key, Usage::OracleNonce)?;
            if !matches!(key.material, Material::Secp256k1(_)) {
                return Err(HsmError::WrongKeyType {
                    id: key_id.clone(),
                    spec: key.header.spec,
                    usage: Usage::OracleNonce,
                });
            }
            // A nonce id the chain has seen committed never comes back, even if its record was
            // removed from the store.
            let digest = crate::anchor::nonce_digest(key_id, nonce_id);
            if inner.audit.nonce_history(&digest)?.committed {
                return Err(HsmError::NonceExists {
                    key: key_id.clone(),
                    nonce: nonce_id.clone(),
                });
            }
            let (k, r) = nonce::fresh_nonce(&inner.secp, &inner.rng)?;
            let r_bytes = r.serialize();
            let aad = nonce::aad(key_id.as_str(), nonce_id.as_str(), &r_bytes);
            let sealed = self.with_kek(|kek| seal::seal(kek, &inner.rng, &aad, k.as_ref()))?;
            let record = nonce::encode_committed(&r_bytes, &sealed);
            let store_key = nonce::store_key(key_id.as_str(), nonce_id.as_str());
            match inner
                .store
                .compare_and_swap(&inner.nonces_ns, &store_key, None, Some(&record))
            {
                Ok(_) => Ok((r, digest)),
                Err(e) if e.is_conflict() => Err(HsmError::NonceExists {
                    key: key_id.clone(),
                    nonce: nonce_id.clone(),
                }),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn sign_with_nonce(
        &self,
        key_id: &KeyId,
        nonce_id: &Label,
        message: &[u8; 32],
    ) -> Result<schnorr::Signature, HsmError> {
        self.audited_subject(
            Operation::SignWithNonce,
            Some(key_id),
            Some(input_hash(message)),
            || {
                let digest = crate::anchor::nonce_digest(key_id, nonce_id);
                Ok((self.sign_nonce_inner(key_id, nonce_id, &digest, message)?, digest))
            },
        )
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
