//! Signing PSBT inputs with keys that stay inside an [`HsmProvider`].
//!
//! [`HsmSigner`] signs every input that names a key below its BIP32 root (by the root's
//! fingerprint in `bip32_derivation` or `tap_key_origins`): ECDSA for legacy, P2SH and segwit v0
//! inputs, BIP341 key-path signatures (the taproot tweak applied inside the provider) and BIP342
//! script-path signatures for each leaf the key appears in. The private keys never leave the
//! provider, and every signature is a record in its audit chain.
//!
//! It is also a BDK [`TransactionSigner`], so a `bdk_wallet::Wallet` can sign through it.

use std::sync::Arc;

use anya_hsm::{AuxRand, HsmError, HsmProvider, KeyId, KeyRef, PublicKey};
use bdk_wallet::signer::{SignerCommon, SignerError, SignerId, TransactionSigner};
use bdk_wallet::SignOptions;
use bitcoin::bip32::{DerivationPath, Fingerprint};
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{All, PublicKey as SecpPublicKey, Secp256k1};
use bitcoin::sighash::{Prevouts, SighashCache, TapSighashType};
use bitcoin::taproot::TapLeafHash;
use bitcoin::{ecdsa, taproot, NetworkKind, TxOut, XOnlyPublicKey};

use crate::psbt::{checked_prevout, validate, PsbtError};

/// Why a PSBT could not be signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The provider refused or failed.
    #[error("HSM: {0}")]
    Hsm(#[from] HsmError),
    /// An input lacks the previous output its sighash commits to.
    #[error("input {index} has no witness_utxo or non_witness_utxo")]
    MissingPrevout {
        /// The input.
        index: usize,
    },
    /// The sighash of an input could not be computed.
    #[error("input {index}: {reason}")]
    Sighash {
        /// The input.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The PSBT breaks a rule of [`validate`]: nothing in it is signed.
    #[error(transparent)]
    Psbt(#[from] PsbtError),
    /// The provider's key at a path is not the key the PSBT names there.
    #[error("input {index}: the key at {path} below the HSM root is not the key the PSBT names")]
    KeyMismatch {
        /// The input.
        index: usize,
        /// The derivation path.
        path: DerivationPath,
    },
}

/// What [`HsmSigner::sign`] added to a PSBT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignReport {
    /// ECDSA signatures added (`partial_sigs`).
    pub ecdsa: usize,
    /// Taproot key-path signatures added (`tap_key_sig`).
    pub taproot_key: usize,
    /// Taproot script-path signatures added (`tap_script_sigs`).
    pub taproot_script: usize,
}

impl SignReport {
    /// All signatures added.
    pub fn total(&self) -> usize {
        self.ecdsa + self.taproot_key + self.taproot_script
    }
}

/// Signs PSBT inputs with the keys below one BIP32 root in an HSM.
#[derive(Clone)]
pub struct HsmSigner {
    hsm: Arc<dyn HsmProvider>,
    root: KeyId,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for HsmSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmSigner")
            .field("root", &self.root)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

enum Job {
    Ecdsa {
        index: usize,
        key: SecpPublicKey,
        path: DerivationPath,
    },
    TapKey {
        index: usize,
        path: DerivationPath,
    },
    TapScript {
        index: usize,
        key: XOnlyPublicKey,
        leaf: TapLeafHash,
        path: DerivationPath,
    },
}

impl HsmSigner {
    /// A signer for the BIP32 root `root` in `hsm` (its fingerprint is read once, here).
    pub fn new(hsm: Arc<dyn HsmProvider>, root: KeyId) -> Result<Self, HsmError> {
        let xpub = hsm.account_xpub(&root, &DerivationPath::master(), NetworkKind::Test)?;
        Ok(Self {
            fingerprint: xpub.origin.0,
            hsm,
            root,
        })
    }

    /// The root's BIP32 fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The root's key id.
    pub fn root(&self) -> &KeyId {
        &self.root
    }

    /// The provider.
    pub fn hsm(&self) -> &Arc<dyn HsmProvider> {
        &self.hsm
    }

    /// Whether `psbt` names any key below this root.
    pub fn signs_any(&self, psbt: &Psbt) -> bool {
        psbt.inputs.iter().any(|input| {
            input.bip32_derivation.values().any(|(fp, _)| *fp == self.fingerprint)
                || input
                    .tap_key_origins
                    .values()
                    .any(|(_, (fp, _))| *fp == self.fingerprint)
        })
    }

    /// Signs every input of `psbt` that names a key below this root and has no signature from
    /// it yet. Inputs of other signers are left alone. Nothing is added if any signature fails.
    ///
    /// A PSBT that breaks a rule of [`validate`] is [`SignError::Psbt`] and nothing is signed:
    /// a forged `non_witness_utxo` would make the signer commit to amounts that are not real,
    /// and an output index past its end makes rust-bitcoin's sighash code panic.
    pub fn sign(&self, psbt: &mut Psbt) -> Result<SignReport, SignError> {
        validate(psbt)?;
        self.sign_validated(psbt)
    }

    /// [`sign`](Self::sign) for a PSBT the caller has just passed through [`validate`] (the
    /// wallet validates once, then runs each of its signers; signing does not touch the UTXO
    /// fields the rules read).
    pub(crate) fn sign_validated(&self, psbt: &mut Psbt) -> Result<SignReport, SignError> {
        let jobs = self.jobs(psbt);
        if jobs.is_empty() {
            return Ok(SignReport::default());
        }
        let needs_all_prevouts = jobs.iter().any(|j| !matches!(j, Job::Ecdsa { .. }));
        let prevouts: Vec<TxOut> = if needs_all_prevouts {
            (0..psbt.inputs.len())
                .map(|index| prevout(psbt, index))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        let mut cache = SighashCache::new(&psbt.unsigned_tx);
        let mut done = Vec::with_capacity(jobs.len());
        for job in &jobs {
            let signed = match job {
                Job::Ecdsa { index, key, path } => {
                    let (msg, ty) = psbt.sighash_ecdsa(*index, &mut cache).map_err(|e| SignError::Sighash {
                        index: *index,
                        reason: e.to_string(),
                    })?;
                    let sig = self.hsm.sign_ecdsa(KeyRef::derived(&self.root, path), msg.as_ref())?;
                    Signed::Ecdsa(
                        *index,
                        *key,
                        ecdsa::Signature {
                            signature: sig,
                            sighash_type: ty,
                        },
                    )
                }
                Job::TapKey { index, path } => {
                    let input = &psbt.inputs[*index];
                    let ty = tap_sighash_type(psbt, *index)?;
                    let sighash = cache
                        .taproot_key_spend_signature_hash(*index, &Prevouts::All(&prevouts), ty)
                        .map_err(|e| SignError::Sighash {
                            index: *index,
                            reason: e.to_string(),
                        })?;
                    let sig = self.hsm.sign_taproot_key_spend(
                        KeyRef::derived(&self.root, path),
                        sighash.as_ref(),
                        input.tap_merkle_root,
                        AuxRand::Fresh,
                    )?;
                    Signed::TapKey(
                        *index,
                        taproot::Signature {
                            signature: sig,
                            sighash_type: ty,
                        },
                    )
                }
                Job::TapScript { index, key, leaf, path } => {
                    let ty = tap_sighash_type(psbt, *index)?;
                    let sighash = cache
                        .taproot_script_spend_signature_hash(*index, &Prevouts::All(&prevouts), *leaf, ty)
                        .map_err(|e| SignError::Sighash {
                            index: *index,
                            reason: e.to_string(),
                        })?;
                    let derived = KeyRef::derived(&self.root, path);
                    match self.hsm.public_key(derived)? {
                        PublicKey::Secp256k1(pk) if pk.x_only_public_key().0 == *key => {}
                        _ => {
                            return Err(SignError::KeyMismatch {
                                index: *index,
                                path: path.clone(),
                            })
                        }
                    }
                    let sig = self.hsm.sign_schnorr(derived, sighash.as_ref(), AuxRand::Fresh)?;
                    Signed::TapScript(
                        *index,
                        *key,
                        *leaf,
                        taproot::Signature {
                            signature: sig,
                            sighash_type: ty,
                        },
                    )
                }
            };
            done.push(signed);
        }
        let mut report = SignReport::default();
        for signed in done {
            match signed {
                Signed::Ecdsa(index, key, sig) => {
                    psbt.inputs[index]
                        .partial_sigs
                        .insert(bitcoin::PublicKey::new(key), sig);
                    report.ecdsa += 1;
                }
                Signed::TapKey(index, sig) => {
                    psbt.inputs[index].tap_key_sig = Some(sig);
                    report.taproot_key += 1;
                }
                Signed::TapScript(index, key, leaf, sig) => {
                    psbt.inputs[index].tap_script_sigs.insert((key, leaf), sig);
                    report.taproot_script += 1;
                }
            }
        }
        Ok(report)
    }

    fn jobs(&self, psbt: &Psbt) -> Vec<Job> {
        let mut jobs = Vec::new();
        for (index, input) in psbt.inputs.iter().enumerate() {
            if input.final_script_sig.is_some() || input.final_script_witness.is_some() {
                continue;
            }
            for (key, (fp, path)) in &input.bip32_derivation {
                if *fp == self.fingerprint && !input.partial_sigs.contains_key(&bitcoin::PublicKey::new(*key)) {
                    jobs.push(Job::Ecdsa {
                        index,
                        key: *key,
                        path: path.clone(),
                    });
                }
            }
            for (key, (leaves, (fp, path))) in &input.tap_key_origins {
                if *fp != self.fingerprint {
                    continue;
                }
                if input.tap_internal_key == Some(*key) && input.tap_key_sig.is_none() {
                    jobs.push(Job::TapKey {
                        index,
                        path: path.clone(),
                    });
                }
                for leaf in leaves {
                    if !input.tap_script_sigs.contains_key(&(*key, *leaf)) {
                        jobs.push(Job::TapScript {
                            index,
                            key: *key,
                            leaf: *leaf,
                            path: path.clone(),
                        });
                    }
                }
            }
        }
        jobs
    }
}

enum Signed {
    Ecdsa(usize, SecpPublicKey, ecdsa::Signature),
    TapKey(usize, taproot::Signature),
    TapScript(usize, XOnlyPublicKey, TapLeafHash, taproot::Signature),
}

/// The output input `index` spends, from its `witness_utxo` or `non_witness_utxo`, once those
/// pass [`validate`]'s rules for the input.
pub(crate) fn prevout(psbt: &Psbt, index: usize) -> Result<TxOut, SignError> {
    let (Some(input), Some(txin)) = (psbt.inputs.get(index), psbt.unsigned_tx.input.get(index)) else {
        return Err(SignError::MissingPrevout { index });
    };
    checked_prevout(index, input, txin)?
        .cloned()
        .ok_or(SignError::MissingPrevout { index })
}

fn tap_sighash_type(psbt: &Psbt, index: usize) -> Result<TapSighashType, SignError> {
    match psbt.inputs[index].sighash_type {
        None => Ok(TapSighashType::Default),
        Some(ty) => ty.taproot_hash_ty().map_err(|e| SignError::Sighash {
            index,
            reason: e.to_string(),
        }),
    }
}

impl SignerCommon for HsmSigner {
    fn id(&self, _secp: &Secp256k1<All>) -> SignerId {
        SignerId::Fingerprint(self.fingerprint)
    }
}

impl TransactionSigner for HsmSigner {
    fn sign_transaction(
        &self,
        psbt: &mut Psbt,
        _sign_options: &SignOptions,
        _secp: &Secp256k1<All>,
    ) -> Result<(), SignerError> {
        self.sign(psbt)
            .map(|_| ())
            .map_err(|e| SignerError::External(e.to_string()))
    }
}
