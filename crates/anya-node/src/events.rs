//! The node's event stream, served on the WebSocket `/v1/events`.
//!
//! Every event gets a sequence number. Each subscriber reads from one shared ring of the last
//! `events.queue` events ([`tokio::sync::broadcast`]): a subscriber that falls more than that
//! far behind is not waited for; it is sent a `lagged` message saying how many events it missed
//! (and from which sequence number it continues), never a silent gap.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

/// Something that happened in the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A wallet saw a transaction for the first time (in the mempool or a block).
    TxSeen {
        /// The wallet.
        wallet: String,
        /// The transaction.
        txid: String,
        /// Whether it was already confirmed when first seen.
        confirmed: bool,
    },
    /// A wallet's transaction confirmed.
    TxConfirmed {
        /// The wallet.
        wallet: String,
        /// The transaction.
        txid: String,
        /// The block height.
        height: u32,
    },
    /// The spending policy decided on a spend.
    PolicyDecision {
        /// The wallet.
        wallet: String,
        /// Whether it was approved.
        approved: bool,
        /// The rule codes it broke (empty when approved).
        violations: Vec<u16>,
        /// Why, for people.
        detail: String,
    },
    /// A record was appended to the HSM's audit chain.
    AuditAppended {
        /// The record's sequence number in the chain.
        record: u64,
        /// The operation (`SignEcdsa`, `GenerateKey`, `Decision`, …).
        operation: String,
        /// The key it concerns, if any.
        key_id: Option<String>,
        /// Its outcome code (0: success).
        outcome: u16,
    },
    /// A key was created.
    KeyCreated {
        /// Its id.
        id: String,
        /// Its spec.
        spec: String,
    },
    /// A wallet was created.
    WalletCreated {
        /// Its name.
        wallet: String,
    },
    /// Blocks were mined on the regtest chain.
    BlocksMined {
        /// The new tip height.
        height: u32,
        /// How many.
        count: u32,
    },
    /// The configuration was reloaded.
    ConfigReloaded,
    /// The oracle announced an event.
    OracleAnnounced {
        /// The event id.
        event_id: String,
        /// Its maturity (unix seconds).
        maturity: u32,
    },
    /// The oracle attested an event.
    OracleAttested {
        /// The event id.
        event_id: String,
        /// The outcomes signed.
        outcomes: Vec<String>,
    },
    /// The oracle refused to attest a price event (too few sources, spread, circuit breaker);
    /// also in the HSM audit chain.
    OracleRefused {
        /// The event id.
        event_id: String,
        /// The stable error code.
        code: String,
        /// Why, for people.
        detail: String,
    },
    /// A DLC contract was made or changed state (an offer, a message received, an accept, or
    /// the periodic check: confirmations, a close by CET, a refund).
    DlcContract {
        /// The wallet that funds it.
        wallet: String,
        /// The contract in its new state.
        contract: crate::dlc::ContractView,
    },
    /// A DLC message to deliver to a counterparty again: after a restart, the last message of
    /// each contract that still waits on the counterparty (the application's transport
    /// delivers it; a counterparty ignores a message for a state it has left).
    DlcResend {
        /// The wallet that funds the contract.
        wallet: String,
        /// The contract (hex; its temporary id while only offered).
        contract: String,
        /// The counterparty's DLC identity (hex public key).
        to: String,
        /// The message (hex of its dlcspecs serialization).
        message: String,
    },
    /// A Lightning channel's funding transaction was made (opened by either side); it is
    /// usable once confirmed (`ln_channel_ready`).
    LnChannelPending {
        /// The BIP32 root of the Lightning node (a token must be allowed to use it to see the
        /// event).
        root: String,
        /// The channel id (hex).
        channel_id: String,
        /// The node's own id of the channel (a decimal `u128`, as `/v1/ln/channels` shows it).
        user_channel_id: String,
        /// The peer (hex node id).
        counterparty_node_id: String,
        /// The funding output, `txid:vout`.
        funding_txo: String,
    },
    /// A Lightning channel can carry payments.
    LnChannelReady {
        /// The BIP32 root of the Lightning node.
        root: String,
        /// The channel id (hex).
        channel_id: String,
        /// The node's own id of the channel (decimal).
        user_channel_id: String,
        /// The peer (hex node id), when known.
        counterparty_node_id: Option<String>,
    },
    /// A Lightning channel was closed (or failed to open).
    LnChannelClosed {
        /// The BIP32 root of the Lightning node.
        root: String,
        /// The channel id (hex).
        channel_id: String,
        /// The node's own id of the channel (decimal).
        user_channel_id: String,
        /// The peer (hex node id), when known.
        counterparty_node_id: Option<String>,
        /// Why, for people.
        reason: Option<String>,
    },
    /// A Lightning payment to this node arrived and was claimed.
    LnPaymentReceived {
        /// The BIP32 root of the Lightning node.
        root: String,
        /// The payment's id (hex), when it has one.
        payment_id: Option<String>,
        /// The payment hash (hex).
        payment_hash: String,
        /// What arrived, in millisatoshis.
        amount_msat: u64,
    },
    /// An outgoing Lightning payment reached its payee.
    LnPaymentSuccessful {
        /// The BIP32 root of the Lightning node.
        root: String,
        /// The payment's id (hex), when it has one.
        payment_id: Option<String>,
        /// The payment hash (hex).
        payment_hash: String,
        /// What the payee got, in millisatoshis, when known.
        amount_msat: Option<u64>,
        /// The routing fee paid, in millisatoshis, when known.
        fee_paid_msat: Option<u64>,
    },
    /// An outgoing Lightning payment failed: nothing reached the payee, and its policy
    /// reservation was released.
    LnPaymentFailed {
        /// The BIP32 root of the Lightning node.
        root: String,
        /// The payment's id (hex), when it has one.
        payment_id: Option<String>,
        /// The payment hash (hex), when known.
        payment_hash: Option<String>,
        /// Why, when known (LDK's `PaymentFailureReason`).
        reason: Option<String>,
    },
    /// This node forwarded a payment between two of its channels.
    LnPaymentForwarded {
        /// The BIP32 root of the Lightning node.
        root: String,
        /// The incoming channel (hex).
        prev_channel_id: String,
        /// The outgoing channel (hex).
        next_channel_id: String,
        /// What went out, in millisatoshis, when known.
        outbound_amount_forwarded_msat: Option<u64>,
        /// The fee earned, in millisatoshis, when known.
        total_fee_earned_msat: Option<u64>,
    },
}

/// An event with its sequence number, as sent to subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct Numbered {
    /// Its sequence number, from 1.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
    /// This, as the JSON sent to subscribers (made once, whatever the number of subscribers).
    #[serde(skip)]
    pub json: String,
}

/// The bus events are published on.
#[derive(Debug, Clone)]
pub struct Events {
    sender: broadcast::Sender<Arc<Numbered>>,
    /// The last sequence number; held while sending, so that subscribers see numbers in order.
    seq: Arc<Mutex<u64>>,
}

impl Events {
    /// A bus keeping the last `queue` events for slow subscribers.
    pub fn new(queue: usize) -> Self {
        let (sender, _) = broadcast::channel(queue.max(1));
        Self {
            sender,
            seq: Arc::new(Mutex::new(0)),
        }
    }

    /// Publishes `event` to every subscriber (none listening is fine).
    pub fn publish(&self, event: Event) {
        let mut last = self.seq.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *last += 1;
        if self.sender.receiver_count() == 0 {
            // Nobody to encode it for (subscribers only see events published after they join).
            return;
        }
        let mut numbered = Numbered {
            seq: *last,
            event,
            json: String::new(),
        };
        numbered.json = serde_json::to_string(&numbered).unwrap_or_default();
        let _ = self.sender.send(Arc::new(numbered));
    }

    /// The wallet or key an event concerns, for tokens limited to some.
    pub fn scope_of(event: &Event) -> (Option<&str>, Option<&str>) {
        match event {
            Event::TxSeen { wallet, .. }
            | Event::TxConfirmed { wallet, .. }
            | Event::PolicyDecision { wallet, .. }
            | Event::WalletCreated { wallet }
            | Event::DlcContract { wallet, .. }
            | Event::DlcResend { wallet, .. } => (Some(wallet), None),
            Event::AuditAppended { key_id, .. } => (None, key_id.as_deref()),
            Event::KeyCreated { id, .. } => (None, Some(id)),
            Event::LnChannelPending { root, .. }
            | Event::LnChannelReady { root, .. }
            | Event::LnChannelClosed { root, .. }
            | Event::LnPaymentReceived { root, .. }
            | Event::LnPaymentSuccessful { root, .. }
            | Event::LnPaymentFailed { root, .. }
            | Event::LnPaymentForwarded { root, .. } => (None, Some(root)),
            Event::OracleAnnounced { .. } | Event::OracleAttested { .. } | Event::OracleRefused { .. } => (None, None),
            Event::BlocksMined { .. } | Event::ConfigReloaded => (None, None),
        }
    }

    /// A new subscriber, receiving events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Numbered>> {
        self.sender.subscribe()
    }

    /// How many subscribers are connected.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }

    /// The last sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        *self.seq.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
