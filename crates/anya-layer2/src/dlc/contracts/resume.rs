//! Resuming after a crash: what a party must send or broadcast again.
//!
//! `ddk-manager` writes each contract state before the message or transaction that depends on
//! it leaves (anya's [`KvDlcStorage`](super::KvDlcStorage) returns once a write is durable), so
//! a process killed at any step restarts with the state the message was made from. What it
//! does not do is send that message or broadcast that transaction again: a party killed after
//! storing its offer (or its accept, or its sign) has a contract its counterparty never heard
//! of, with coins reserved for it; an accepting party killed between storing the signed
//! contract and broadcasting the funding transaction has a contract that waits for a funding
//! transaction nobody will ever send, and both parties' coins stay locked.
//!
//! [`pending`] reads the store after a restart and returns, for each contract in such a state,
//! the message to send again (rebuilt from the stored state: the same bytes as the first time,
//! as the tests check) or the funding transaction to broadcast (completed with the offer
//! party's stored funding signatures and the wallet's own, signed again through the wallet).
//! [`resume`] broadcasts the funding transactions and returns the messages for the caller's
//! transport. Sending a message twice is harmless: the counterparty's manager refuses one for
//! a state it has left.

use std::ops::Deref;

use std::collections::HashSet;

use bitcoin::psbt::Psbt;
use bitcoin::{OutPoint, Transaction, Witness};
use ddk_manager::contract::accepted_contract::AcceptedContract;
use ddk_manager::contract::signed_contract::SignedContract;
use ddk_manager::contract::Contract;
use ddk_manager::error::Error as ManagerError;
use ddk_manager::{Blockchain, ContractId, Storage, Wallet};
use ddk_messages::{FundingSignatures, Message, OfferDlc};
use secp256k1::PublicKey;

/// Something a restarted party must do again for one contract.
#[derive(Debug)]
pub enum Pending {
    /// Send `message` to `to` again (its last message may never have left).
    Send {
        /// The contract's id as the store has it (the temporary id while offered).
        contract: ContractId,
        /// The counterparty.
        to: PublicKey,
        /// The message, rebuilt from the stored state.
        message: Box<Message>,
    },
    /// Recovery failed for this contract (its funding transaction could not be completed or
    /// was refused by the node); the other contracts are resumed regardless.
    Failed {
        /// The contract.
        contract: ContractId,
        /// Why.
        reason: String,
    },
    /// Broadcast the contract's funding transaction (this party accepted, stored the signed
    /// contract, and may have stopped before broadcasting).
    Broadcast {
        /// The contract.
        contract: ContractId,
        /// The funding transaction, fully signed.
        transaction: Box<Transaction>,
    },
}

/// The message the party last sent for `contract`, if the protocol still waits on the
/// counterparty: its offer while offered, its accept while accepted, its sign while signed and
/// the funding transaction unseen (the offer party). `None` otherwise.
pub fn outgoing_message(contract: &Contract) -> Option<Message> {
    match contract {
        Contract::Offered(o) if o.is_offer_party => Some(Message::Offer(OfferDlc::from(o))),
        Contract::Accepted(a) if !a.offered_contract.is_offer_party => {
            Some(Message::Accept(a.get_accept_contract_msg(&a.adaptor_signatures)))
        }
        Contract::Signed(s) if s.accepted_contract.offered_contract.is_offer_party => {
            Some(Message::Sign(s.get_sign_dlc(s.adaptor_signatures.clone())))
        }
        _ => None,
    }
}

/// The funding PSBT of `accepted` with every input's spent output, and the offer party's
/// inputs finalized with `theirs` (their funding signatures): what the accepting party checks
/// and completes. Returns it with the indexes of the accepting party's inputs. Contracts funded
/// from another contract (a splice) are [`ManagerError::InvalidState`].
pub fn funding_with_offer_witnesses(
    accepted: &AcceptedContract,
    theirs: &FundingSignatures,
) -> Result<(Psbt, Vec<usize>), ManagerError> {
    let offered = &accepted.offered_contract;
    let mut all: Vec<_> = offered
        .funding_inputs
        .iter()
        .chain(accepted.funding_inputs.iter())
        .collect();
    if all.iter().any(|i| i.dlc_input.is_some()) {
        return Err(ManagerError::InvalidState(
            "a contract funded from another contract is not supported".to_owned(),
        ));
    }
    all.sort_by_key(|i| i.input_serial_id);
    let fund = &accepted.dlc_transactions.fund;
    if all.len() != fund.input.len() {
        return Err(ManagerError::InvalidState(
            "the funding inputs do not match the funding transaction".to_owned(),
        ));
    }
    let mut psbt = Psbt::from_unsigned_tx(fund.clone())
        .map_err(|e| ManagerError::InvalidState(format!("the stored funding transaction: {e}")))?;
    for (index, input) in all.iter().enumerate() {
        let prev: Transaction = bitcoin::consensus::deserialize(&input.prev_tx)?;
        let out = prev
            .output
            .get(input.prev_tx_vout as usize)
            .ok_or_else(|| ManagerError::InvalidState(format!("funding input {index} names a missing output")))?;
        if fund.input[index].previous_output != OutPoint::new(prev.compute_txid(), input.prev_tx_vout) {
            return Err(ManagerError::InvalidState(format!(
                "funding input {index} is not the stored transaction's"
            )));
        }
        psbt.inputs[index].witness_utxo = Some(out.clone());
    }
    let theirs = &theirs.funding_signatures;
    if theirs.len() != offered.funding_inputs.len() {
        return Err(ManagerError::InvalidState(
            "the offer party's funding signatures do not match its inputs".to_owned(),
        ));
    }
    let position = |input| {
        all.iter().position(|i| *i == input).ok_or_else(|| {
            ManagerError::InvalidState("a funding input is missing from the funding transaction".to_owned())
        })
    };
    for (input, signature) in offered.funding_inputs.iter().zip(theirs) {
        let elements: Vec<&[u8]> = signature
            .witness_elements
            .iter()
            .map(|e| e.witness.as_slice())
            .collect();
        psbt.inputs[position(input)?].final_script_witness = Some(Witness::from_slice(&elements));
    }
    let ours = accepted
        .funding_inputs
        .iter()
        .map(position)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((psbt, ours))
}

/// Checks the offer party's inputs of a funding PSBT from [`funding_with_offer_witnesses`]
/// (`ours` are the accepting party's input indexes) with Bitcoin Core's interpreter: a funding
/// transaction is only worth signing if the other side's signatures are valid.
#[cfg(feature = "dlc-contracts")]
pub fn verify_offer_witnesses(psbt: &Psbt, ours: &[usize]) -> Result<(), String> {
    let spent: Vec<bitcoin::TxOut> = psbt
        .inputs
        .iter()
        .map(|i| i.witness_utxo.clone().ok_or("a funding input without its output"))
        .collect::<Result<_, _>>()?;
    let mut tx = psbt.unsigned_tx.clone();
    for (txin, input) in tx.input.iter_mut().zip(&psbt.inputs) {
        txin.witness = input.final_script_witness.clone().unwrap_or_default();
    }
    for index in (0..tx.input.len()).filter(|i| !ours.contains(i)) {
        anya_bitcoin::verify_input(&tx, index, &spent, anya_bitcoin::VerifyFlags::consensus())
            .map_err(|e| format!("the offer party's funding signature for input {index}: {e}"))?;
    }
    Ok(())
}

/// The funding transaction of `contract` signed by both parties: the offer party's stored
/// funding signatures and the accepting party's own inputs signed again by `wallet` (its
/// spending policy approves the same transaction again without counting it twice). For the
/// accepting party of a contract whose funding inputs are ordinary coins.
pub async fn complete_funding<W: Deref>(wallet: &W, contract: &SignedContract) -> Result<Transaction, ManagerError>
where
    W::Target: Wallet,
{
    let accepted = &contract.accepted_contract;
    if accepted.offered_contract.is_offer_party {
        return Err(ManagerError::InvalidState(
            "only the accepting party holds every funding signature".to_owned(),
        ));
    }
    let (mut psbt, ours) = funding_with_offer_witnesses(accepted, &contract.funding_signatures)?;
    // Never sign (nor have the policy approve) a funding transaction whose other half is bad:
    // a store written by a bare manager can hold such a signed contract.
    #[cfg(feature = "dlc-contracts")]
    verify_offer_witnesses(&psbt, &ours).map_err(ManagerError::InvalidState)?;
    for index in ours {
        wallet.sign_psbt_input(&mut psbt, index).await?;
    }
    let mut tx = accepted.dlc_transactions.fund.clone();
    for (txin, input) in tx.input.iter_mut().zip(&psbt.inputs) {
        txin.witness = input
            .final_script_witness
            .clone()
            .ok_or_else(|| ManagerError::InvalidState("a funding input is still unsigned".to_owned()))?;
    }
    Ok(tx)
}

/// What this party must send or broadcast again after a restart (see the [module
/// docs](self)). A funding transaction the node already has (in its mempool or a block) is not
/// listed.
pub async fn pending<S: Deref, W: Deref, B: Deref>(
    store: &S,
    wallet: &W,
    chain: &B,
) -> Result<Vec<Pending>, ManagerError>
where
    S::Target: Storage,
    W::Target: Wallet,
    B::Target: Blockchain,
{
    let mut out = Vec::new();
    for contract in store.get_contracts().await? {
        let id = contract.get_id();
        if let Contract::Signed(signed) = &contract {
            let fund = &signed.accepted_contract.dlc_transactions.fund;
            // Known to the node (mempool or chain): nothing is waiting any more.
            if chain.get_transaction(&fund.compute_txid()).await.is_ok() {
                continue;
            }
            if !signed.accepted_contract.offered_contract.is_offer_party {
                out.push(match complete_funding(wallet, signed).await {
                    Ok(tx) => Pending::Broadcast {
                        contract: id,
                        transaction: Box::new(tx),
                    },
                    Err(e) => Pending::Failed {
                        contract: id,
                        reason: e.to_string(),
                    },
                });
                continue;
            }
        }
        if let Some(message) = outgoing_message(&contract) {
            let to = match &contract {
                Contract::Offered(o) => o.counter_party,
                Contract::Accepted(a) => a.offered_contract.counter_party,
                Contract::Signed(s) => s.accepted_contract.offered_contract.counter_party,
                _ => continue,
            };
            out.push(Pending::Send {
                contract: id,
                to,
                message: Box::new(message),
            });
        }
    }
    Ok(out)
}

/// The coins this party's live contracts (offered, accepted, signed, not yet confirmed) fund
/// themselves with: what its wallet must keep reserved.
pub async fn funding_outpoints<S: Deref>(store: &S) -> Result<HashSet<OutPoint>, ManagerError>
where
    S::Target: Storage,
{
    let mut live = HashSet::new();
    for contract in store.get_contracts().await? {
        let (offered, accept_inputs) = match &contract {
            Contract::Offered(o) => (o, None),
            Contract::Accepted(a) => (&a.offered_contract, Some(&a.funding_inputs)),
            Contract::Signed(s) => (
                &s.accepted_contract.offered_contract,
                Some(&s.accepted_contract.funding_inputs),
            ),
            _ => continue,
        };
        let ours = if offered.is_offer_party {
            &offered.funding_inputs
        } else {
            match accept_inputs {
                Some(inputs) => inputs,
                None => continue,
            }
        };
        for input in ours {
            let prev: Transaction = bitcoin::consensus::deserialize(&input.prev_tx)?;
            live.insert(OutPoint::new(prev.compute_txid(), input.prev_tx_vout));
        }
    }
    Ok(live)
}

/// What [`resume`] did, and what is left to the caller.
#[derive(Debug, Default)]
pub struct Resumed {
    /// Reserved coins no live contract used, now released.
    pub released: Vec<OutPoint>,
    /// Funding transactions broadcast again.
    pub broadcast: Vec<bitcoin::Txid>,
    /// Messages to send again ([`Pending::Send`] each), through the caller's transport.
    pub messages: Vec<Pending>,
    /// Contracts that could not be resumed ([`Pending::Failed`] each: a funding transaction
    /// the node refused, …); the others were.
    pub failed: Vec<Pending>,
}

/// Run once at start, before the manager takes any new step: releases the wallet's
/// reservations that no live contract uses (a process killed between reserving coins and
/// storing the contract left them), broadcasts every funding transaction [`pending`] finds,
/// and returns the messages to send again.
#[cfg(feature = "dlc-contracts")]
pub async fn resume<S: Deref, B: Deref>(
    store: &S,
    wallet: &super::DlcWallet,
    chain: &B,
) -> Result<Resumed, ManagerError>
where
    S::Target: Storage,
    B::Target: Blockchain,
{
    let live = funding_outpoints(store).await?;
    let mut done = Resumed {
        released: wallet.release_unused(&live)?,
        ..Resumed::default()
    };
    for item in pending(store, &wallet, chain).await? {
        match item {
            Pending::Broadcast { contract, transaction } => {
                let hex = bitcoin::hex::DisplayHex::to_lower_hex_string(&contract[..]);
                match chain.send_transaction(&transaction).await {
                    Ok(()) => {
                        tracing::info!(contract = %hex, txid = %transaction.compute_txid(), "broadcast a funding transaction again after a restart");
                        done.broadcast.push(transaction.compute_txid());
                    }
                    Err(e) => {
                        tracing::warn!(contract = %hex, error = %e, "the node refused a resumed funding transaction");
                        done.failed.push(Pending::Failed {
                            contract,
                            reason: e.to_string(),
                        });
                    }
                }
            }
            failed @ Pending::Failed { .. } => done.failed.push(failed),
            send @ Pending::Send { .. } => done.messages.push(send),
        }
    }
    Ok(done)
}
