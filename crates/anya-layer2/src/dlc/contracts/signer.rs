//! The contract manager's per-contract funding keys, derived inside anya-hsm.
//!
//! Each contract's funding key is the child of the wallet's BIP32 root at the HSM's dedicated
//! DLC branch ([`ExportScope::Dlc`]) followed by four hardened steps taken from the contract's
//! key id. The public key is read from the HSM without any export. `ddk-manager` signs the
//! contract's adaptor, refund and funding-output signatures itself and asks
//! [`ContractSigner::get_secret_key`] for the raw key to do so: that call is
//! [`HsmProvider::export_scoped_child`], which only a root created with
//! [`Usage::ExportDlcChild`](anya_hsm::Usage::ExportDlcChild) allows, which can reach no key
//! outside the DLC branch (never the wallet's own keys), and which the HSM records in its audit
//! chain on every call. See `docs/adr/0006-dlc-contract-keys.md`.
//!
//! DLC channels (which need arbitrary per-update secrets) are not supported: their two methods
//! return a typed error.

use std::sync::Arc;

use anya_hsm::{ExportScope, HsmProvider, KeyId, KeyRef, PublicKey as HsmPublicKey};
use bitcoin::bip32::ChildNumber;
use bitcoin::hashes::{sha256, Hash, HashEngine};
use ddk_manager::error::Error as ManagerError;
use ddk_manager::{ContractSigner, ContractSignerProvider};
use secp256k1::{PublicKey, Secp256k1, SecretKey, Signing};

/// Domain separation of the key ids this provider makes.
const KEY_ID_TAG: &[u8] = b"anya/dlc/contract-key/v1";

fn signer_error(e: impl std::fmt::Display) -> ManagerError {
    ManagerError::InvalidState(format!("contract key: {e}"))
}

/// The path below the DLC branch for `key_id`: four hardened steps from its first 16 bytes.
pub fn contract_key_path(key_id: &[u8; 32]) -> Vec<ChildNumber> {
    key_id[..16]
        .chunks_exact(4)
        .map(|c| {
            let index = u32::from_be_bytes([c[0], c[1], c[2], c[3]]) & 0x7fff_ffff;
            ChildNumber::Hardened { index }
        })
        .collect()
}

/// Per-contract funding keys from the BIP32 root `root` in `hsm`.
#[derive(Clone)]
pub struct HsmContractSignerProvider {
    hsm: Arc<dyn HsmProvider>,
    root: KeyId,
}

impl std::fmt::Debug for HsmContractSignerProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmContractSignerProvider")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl HsmContractSignerProvider {
    /// Keys below `root` (a BIP32 root whose policy allows
    /// [`Usage::ExportDlcChild`](anya_hsm::Usage::ExportDlcChild)).
    pub fn new(hsm: Arc<dyn HsmProvider>, root: KeyId) -> Self {
        Self { hsm, root }
    }
}

/// One contract's funding key: its public key, and the HSM path to ask for its secret.
#[derive(Clone)]
pub struct HsmContractSigner {
    hsm: Arc<dyn HsmProvider>,
    root: KeyId,
    path: Vec<ChildNumber>,
    public_key: PublicKey,
}

impl std::fmt::Debug for HsmContractSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmContractSigner")
            .field("root", &self.root)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl ContractSigner for HsmContractSigner {
    fn get_public_key<C: Signing>(&self, _secp: &Secp256k1<C>) -> Result<PublicKey, ManagerError> {
        Ok(self.public_key)
    }

    /// Exported through the HSM's audited, DLC-scoped export (one audit record per call).
    fn get_secret_key(&self) -> Result<SecretKey, ManagerError> {
        let secret = self
            .hsm
            .export_scoped_child(&self.root, ExportScope::Dlc, &self.path)
            .map_err(signer_error)?;
        let key = SecretKey::from_slice(secret.expose()).map_err(signer_error)?;
        if key.public_key(&Secp256k1::signing_only()) != self.public_key {
            return Err(signer_error("the HSM exported a key that is not the contract's"));
        }
        Ok(key)
    }
}

impl ContractSignerProvider for HsmContractSignerProvider {
    type Signer = HsmContractSigner;

    fn derive_signer_key_id(&self, is_offer_party: bool, temp_id: [u8; 32]) -> [u8; 32] {
        let mut engine = sha256::Hash::engine();
        engine.input(KEY_ID_TAG);
        engine.input(&[u8::from(is_offer_party)]);
        engine.input(&temp_id);
        sha256::Hash::from_engine(engine).to_byte_array()
    }

    fn derive_contract_signer(&self, key_id: [u8; 32]) -> Result<Self::Signer, ManagerError> {
        let path = contract_key_path(&key_id);
        let full: Vec<ChildNumber> = std::iter::once(ExportScope::Dlc.branch())
            .chain(path.iter().copied())
            .collect();
        let public_key = match self
            .hsm
            .public_key(KeyRef::Derived {
                root: &self.root,
                path: &full,
            })
            .map_err(signer_error)?
        {
            HsmPublicKey::Secp256k1(pk) => pk,
            other => return Err(signer_error(format!("the root gave a non-secp256k1 key: {other:?}"))),
        };
        Ok(HsmContractSigner {
            hsm: Arc::clone(&self.hsm),
            root: self.root.clone(),
            path,
            public_key,
        })
    }

    fn get_secret_key_for_pubkey(&self, _pubkey: &PublicKey) -> Result<SecretKey, ManagerError> {
        Err(ManagerError::InvalidState(
            "DLC channels are not supported: anya's contract keys are per contract".to_owned(),
        ))
    }

    fn get_new_secret_key(&self) -> Result<SecretKey, ManagerError> {
        Err(ManagerError::InvalidState(
            "DLC channels are not supported: anya's contract keys are per contract".to_owned(),
        ))
    }
}
