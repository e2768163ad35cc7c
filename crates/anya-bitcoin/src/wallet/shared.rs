//! Coins set aside for, and inputs signed into, transactions the wallet builds together with
//! another party (a DLC's funding transaction).
//!
//! - **Reservations.** [`AnyaWallet::select_coins`] picks confirmed coins for an amount
//!   and reserves them in the store in one atomic batch (a compare-and-swap per coin, so two
//!   contracts never get the same coin, across threads and processes). Reserved coins survive
//!   restarts, are never chosen by [`AnyaWallet::build`], and stay reserved until
//!   [`AnyaWallet::unreserve`] (or until they are spent, when the next selection drops their
//!   records).
//! - **Shared signing.** [`AnyaWallet::sign_shared_input`] signs one of the wallet's inputs of a
//!   transaction whose other inputs belong to someone else. The spending policy judges what
//!   leaves *this* wallet (its inputs minus the outputs paying it), attributed to the shared
//!   output (the largest P2WSH output that is not the wallet's, else the largest), and the
//!   decision is in the HSM's audit chain before any signature is made. The input is signed
//!   with the wallet's own record of the coin (never the PSBT's amount), finalized, and checked
//!   by Bitcoin Core's script interpreter.

use std::collections::HashSet;

use anya_storage::{Namespace, Scan, StoreError, WriteBatch};
use bdk_wallet::{AddressInfo, KeychainKind, LocalOutput};
use bitcoin::consensus::encode::{deserialize, serialize};
use bitcoin::constants::COINBASE_MATURITY;
use bitcoin::psbt::Psbt;
use bitcoin::{Amount, OutPoint, TxOut};
use miniscript::psbt::PsbtExt;

use super::{AnyaWallet, PersistError, WalletError};
use crate::policy::{OutputRole, SpendOutput, SpendSummary};
use crate::psbt::{checked_total, AmountSide};
use crate::verify::{verify_input, VerifyFlags};

/// Retries of a selection whose reservation lost to another's, beyond one per coin it could
/// choose. Each lost race means another selection reserved one of those coins, so unless coins
/// are unreserved meanwhile a selection ends (chosen, or [`WalletError::InsufficientFunds`])
/// within one retry per coin; two selectors choosing largest first collide again and again,
/// so a fixed small count would fail one of them while coins are left.
const MAX_SELECT_RETRIES: usize = 8;

fn reserved_ns(wallet: &AnyaWallet) -> Result<Namespace, StoreError> {
    Namespace::new(format!("anya/wallet/{}/reserved", wallet.name))
}

impl AnyaWallet {
    /// Reveals (and stores) the next change address.
    pub fn next_change_address(&mut self) -> Result<AddressInfo, WalletError> {
        let info = self.wallet.reveal_next_address(KeychainKind::Internal);
        self.persist()?;
        Ok(info)
    }

    /// The coins reserved by [`select_coins`](Self::select_coins) and not yet
    /// [released](Self::unreserve), in outpoint order.
    pub fn reserved(&self) -> Result<Vec<OutPoint>, WalletError> {
        let ns = reserved_ns(self)?;
        self.store
            .scan(&ns, Scan::all())?
            .into_iter()
            .map(|e| {
                deserialize::<OutPoint>(&e.key).map_err(|_| {
                    WalletError::Persist(PersistError::Corrupt {
                        key: format!("anya/wallet/{}/reserved", self.name),
                        reason: "a reservation key is not an outpoint".to_owned(),
                    })
                })
            })
            .collect()
    }

    /// Chooses confirmed (and, from a coinbase, mature), unreserved coins worth at least
    /// `amount` (largest first) and, when `reserve` is set, reserves them durably, all or none.
    /// A coin reserved by a concurrent selection is skipped and the choice made again.
    /// Records of reserved coins this wallet knows to be spent are dropped in the same batch
    /// (a coin it has not seen yet, reserved through a handle synced further, keeps its record).
    ///
    /// Not enough coins is [`WalletError::InsufficientFunds`], and nothing is reserved.
    pub fn select_coins(&self, amount: Amount, reserve: bool) -> Result<Vec<LocalOutput>, WalletError> {
        let ns = reserved_ns(self)?;
        let mut retries: Option<usize> = None;
        loop {
            let reserved: HashSet<OutPoint> = self.reserved()?.into_iter().collect();
            let mut unspent: Vec<LocalOutput> = self.wallet.list_unspent().collect();
            let live: HashSet<OutPoint> = unspent.iter().map(|u| u.outpoint).collect();
            let tip = self.wallet.latest_checkpoint().height();
            unspent.retain(|u| self.spendable_next_block(u, tip) && !reserved.contains(&u.outpoint));
            let retries = retries.get_or_insert(unspent.len().saturating_add(MAX_SELECT_RETRIES));
            unspent.sort_by(|a, b| b.txout.value.cmp(&a.txout.value).then(a.outpoint.cmp(&b.outpoint)));
            let mut chosen = Vec::new();
            let mut total = Amount::ZERO;
            for utxo in unspent {
                if total >= amount && !chosen.is_empty() {
                    break;
                }
                total = checked_total([total, utxo.txout.value], AmountSide::Inputs)?;
                chosen.push(utxo);
            }
            if total < amount || chosen.is_empty() {
                return Err(WalletError::InsufficientFunds {
                    needed: amount,
                    available: total,
                });
            }
            if !reserve {
                return Ok(chosen);
            }
            let mut batch = WriteBatch::new();
            let now = self.clock.now().as_secs();
            for utxo in &chosen {
                let key = serialize(&utxo.outpoint);
                batch.check(&ns, key.clone(), None)?;
                batch.put(&ns, key, now.to_be_bytes())?;
            }
            // Spent as far as this wallet knows: it holds the transaction that made the coin,
            // and the coin is not unspent.
            let spent = |o: &&OutPoint| !live.contains(o) && self.wallet.get_tx(o.txid).is_some();
            for gone in reserved.iter().filter(spent) {
                batch.delete(&ns, serialize(gone))?;
            }
            match self.store.write(batch) {
                Ok(_) => return Ok(chosen),
                Err(e) if e.is_conflict() && *retries > 0 => *retries -= 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether `utxo` may be spent by the block after `tip`: it is confirmed and, if a coinbase
    /// pays it, mature (BDK's own coin selection skips immature coinbase outputs by the same
    /// rule). A confirmed but immature coinbase output reserved for a funding transaction would
    /// make that transaction invalid for up to 100 blocks.
    fn spendable_next_block(&self, utxo: &LocalOutput, tip: u32) -> bool {
        let Some(height) = utxo.chain_position.confirmation_height_upper_bound() else {
            return false;
        };
        let coinbase = self
            .wallet
            .get_tx(utxo.outpoint.txid)
            .is_some_and(|tx| tx.tx_node.tx.is_coinbase());
        !coinbase || tip.saturating_sub(height) >= COINBASE_MATURITY - 1
    }

    /// Releases reserved coins (a contract that was refused or abandoned before its funding
    /// transaction was signed). Coins that were not reserved are ignored.
    pub fn unreserve(&self, outpoints: &[OutPoint]) -> Result<(), WalletError> {
        let ns = reserved_ns(self)?;
        let mut batch = WriteBatch::new();
        for outpoint in outpoints {
            batch.delete(&ns, serialize(outpoint))?;
        }
        self.store.write(batch)?;
        Ok(())
    }

    /// What the policy judges when the wallet signs into a shared transaction: the wallet's
    /// inputs (valued from its own records), the outputs paying it, and what leaves it as one
    /// external output on the shared output: the largest P2WSH output that is not the
    /// wallet's (a DLC's 2-of-2 funding output), or else the largest output that is not.
    ///
    /// The fee stands for the transaction's whole fee (as far as the PSBT's other inputs tell),
    /// capped at what leaves the wallet: an upper bound on the wallet's share.
    pub fn summarize_shared(&self, psbt: &Psbt) -> Result<SpendSummary, WalletError> {
        let tx = &psbt.unsigned_tx;
        let mut ours_in = Amount::ZERO;
        let mut inputs = Vec::new();
        for txin in &tx.input {
            if let Some(utxo) = self.wallet.get_utxo(txin.previous_output) {
                ours_in = checked_total([ours_in, utxo.txout.value], AmountSide::Inputs)?;
                inputs.push(txin.previous_output);
            }
        }
        if inputs.is_empty() {
            return Err(WalletError::Psbt(
                "no input of the transaction is the wallet's".to_owned(),
            ));
        }
        let mut outputs = Vec::new();
        let mut ours_out = Amount::ZERO;
        let mut shared: Option<&TxOut> = None;
        for out in &tx.output {
            if self.is_mine(&out.script_pubkey) {
                ours_out = checked_total([ours_out, out.value], AmountSide::Outputs)?;
                outputs.push(SpendOutput {
                    script_pubkey: out.script_pubkey.clone(),
                    value: out.value,
                    role: OutputRole::Wallet,
                });
            } else if shared
                .is_none_or(|s| (out.script_pubkey.is_p2wsh(), out.value) > (s.script_pubkey.is_p2wsh(), s.value))
            {
                shared = Some(out);
            }
        }
        let leaving = ours_in.checked_sub(ours_out).unwrap_or(Amount::ZERO);
        // The whole transaction's fee and rate, when every spent output is in the PSBT (a
        // DLC funding PSBT carries them); otherwise what leaves the wallet bounds the fee.
        let spent: Option<Vec<TxOut>> = (0..psbt.inputs.len())
            .map(|index| crate::signer::prevout(psbt, index).ok())
            .collect();
        let (total_fee, weight) = match &spent {
            Some(spent) => {
                let input_value = checked_total(spent.iter().map(|o| o.value), AmountSide::Inputs)?;
                let output_value = checked_total(tx.output.iter().map(|o| o.value), AmountSide::Outputs)?;
                let fee = input_value
                    .checked_sub(output_value)
                    .ok_or_else(|| WalletError::Psbt(format!("outputs {output_value} exceed inputs {input_value}")))?;
                (fee, self.signed_weight_of(psbt, spent)?)
            }
            None => (leaving, tx.weight()),
        };
        let fee = total_fee.min(leaving);
        if let Some(out) = shared {
            outputs.push(SpendOutput {
                script_pubkey: out.script_pubkey.clone(),
                value: leaving - fee,
                role: OutputRole::External,
            });
        }
        Ok(SpendSummary {
            txid: tx.compute_txid(),
            input_value: ours_in,
            outputs,
            fee,
            fee_rate: total_fee / weight,
            inputs,
        })
    }

    /// Signs input `index` of a transaction built with another party (a DLC funding
    /// transaction), after the spending policy approved [what leaves the
    /// wallet](Self::summarize_shared) (the decision is in the HSM's audit chain; approving the
    /// same transaction again for its next input does not count it twice). The input's
    /// previous output must be one of the wallet's unspent coins; its amount and script come
    /// from the wallet's records, not from the PSBT, and it is signed with SIGHASH_ALL
    /// (SIGHASH_DEFAULT for Taproot) whatever sighash type the PSBT asks for. The input is
    /// finalized and verified with Bitcoin Core's script interpreter against the PSBT's spent
    /// outputs.
    ///
    /// A refusal is [`WalletError::Policy`] and nothing is signed; an input that is not the
    /// wallet's is [`WalletError::Psbt`].
    pub fn sign_shared_input(&self, psbt: &mut Psbt, index: usize) -> Result<(), WalletError> {
        let (hsm, key) = self.signing()?;
        let outpoint = psbt
            .unsigned_tx
            .input
            .get(index)
            .map(|i| i.previous_output)
            .ok_or_else(|| WalletError::Psbt(format!("the PSBT has no input {index}")))?;
        if psbt.inputs.len() != psbt.unsigned_tx.input.len() {
            return Err(WalletError::Psbt(
                "the PSBT's input maps do not match its inputs".to_owned(),
            ));
        }
        let utxo = self.wallet.get_utxo(outpoint).ok_or_else(|| {
            WalletError::Psbt(format!(
                "input {index} ({outpoint}) is not an unspent coin of the wallet"
            ))
        })?;
        // The wallet's own description of the coin replaces whatever the PSBT said about it.
        let ours = self
            .wallet
            .get_psbt_input(utxo, None, true)
            .map_err(|e| WalletError::Psbt(e.to_string()))?;
        let input = &mut psbt.inputs[index];
        input.witness_utxo = ours.witness_utxo;
        input.non_witness_utxo = None;
        input.bip32_derivation = ours.bip32_derivation;
        input.tap_key_origins = ours.tap_key_origins;
        input.tap_internal_key = ours.tap_internal_key;
        input.redeem_script = ours.redeem_script;
        input.witness_script = ours.witness_script;
        input.tap_merkle_root = ours.tap_merkle_root;
        input.tap_scripts = ours.tap_scripts;
        // The signature commits to the whole transaction the policy judged (SIGHASH_ALL, or
        // SIGHASH_DEFAULT for Taproot), whatever the PSBT asks: with SIGHASH_NONE or
        // SIGHASH_SINGLE the other party could rewrite the outputs after we signed.
        input.sighash_type = None;
        input.partial_sigs.clear();
        input.tap_key_sig = None;
        input.tap_script_sigs.clear();
        // A witness the PSBT brings for this input is not ours to keep: the finalizer keeps
        // an input that is already final, so a stale or junk one would stand in for our
        // signature (and fail verification after the policy counted the spend).
        input.final_script_sig = None;
        input.final_script_witness = None;

        // Every spent output must be known before the policy counts the spend: signing and
        // verification need them, and a PSBT that can never be signed must not use up the
        // velocity allowance.
        for i in 0..psbt.inputs.len() {
            crate::signer::prevout(psbt, i)?;
        }
        let summary = self.summarize_shared(psbt)?;
        self.policy.approve(&summary, hsm, key)?;

        // Sign this input alone: a copy in which no other input names the wallet's keys.
        let mut single = psbt.clone();
        for (i, other) in single.inputs.iter_mut().enumerate() {
            if i != index {
                other.bip32_derivation.clear();
                other.tap_key_origins.clear();
            }
        }
        for signer in &self.signers {
            signer.sign(&mut single)?;
        }
        let secp = secp256k1::Secp256k1::verification_only();
        single
            .finalize_inp_mut(&secp, index)
            .map_err(|_| WalletError::NotFinalized { inputs: vec![index] })?;
        let witness = single.inputs[index]
            .final_script_witness
            .clone()
            .ok_or(WalletError::NotFinalized { inputs: vec![index] })?;
        let spent = (0..single.inputs.len())
            .map(|i| crate::signer::prevout(&single, i))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = single.unsigned_tx.clone();
        tx.input[index].witness = witness;
        tx.input[index].script_sig = single.inputs[index].final_script_sig.clone().unwrap_or_default();
        verify_input(&tx, index, &spent, VerifyFlags::consensus())?;
        psbt.inputs[index] = single.inputs.swap_remove(index);
        Ok(())
    }
}
