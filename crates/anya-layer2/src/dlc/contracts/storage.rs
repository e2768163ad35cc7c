//! The contract manager's `Storage` on any [`KvStore`] (SQLite, RocksDB, PostgreSQL).
//!
//! One namespace holds three kinds of record, each the state's tag byte followed by the
//! manager's own serialization of that state (`lightning`'s `Writeable`):
//!
//! - `c/<contract id>`: a contract. An offered contract is stored under its temporary id; when
//!   it becomes accepted (or signed) it moves to its final id in the same atomic batch that
//!   removes the temporary record, so no reader ever sees it twice or not at all.
//! - `h/<channel id>`: a channel, likewise moved from its temporary id when accepted or signed.
//!   [`upsert_channel`](ddk_manager::Storage::upsert_channel) writes a channel and its
//!   contract in one batch, as the trait requires.
//! - `m`: the chain monitor.
//!
//! A write returns once it is durable (the store's contract), so a state the manager relies on
//! survives a kill before the message that depends on it leaves.

use std::sync::Arc;

use anya_storage::{KvStore, Namespace, Scan, WriteBatch};
use ddk_manager::chain_monitor::ChainMonitor;
use ddk_manager::channel::offered_channel::OfferedChannel;
use ddk_manager::channel::signed_channel::{SignedChannel, SignedChannelStateType};
use ddk_manager::channel::Channel;
use ddk_manager::contract::offered_contract::OfferedContract;
use ddk_manager::contract::signed_contract::SignedContract;
use ddk_manager::contract::{Contract, PreClosedContract};
use ddk_manager::error::Error as ManagerError;
use ddk_manager::{ChannelId, ContractId};
use lightning::util::ser::{Readable, Writeable};

const CONTRACT: &[u8] = b"c/";
const CHANNEL: &[u8] = b"h/";
const MONITOR: &[u8] = b"m";

fn storage_error(e: impl std::fmt::Display) -> ManagerError {
    ManagerError::StorageError(e.to_string())
}

fn key(prefix: &[u8], id: &[u8; 32]) -> Vec<u8> {
    [prefix, id.as_slice()].concat()
}

fn tagged(tag: u8, state: &impl Writeable) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&state.encode());
    out
}

fn read<T: Readable>(bytes: &[u8]) -> Result<T, ManagerError> {
    crate::dlc::oracle::decode_exact(bytes).map_err(|e| storage_error(format!("a stored DLC record: {e}")))
}

/// A contract as stored: its state's tag and serialization.
pub fn encode_contract(c: &Contract) -> Vec<u8> {
    match c {
        Contract::Offered(o) => tagged(1, o),
        Contract::Accepted(a) => tagged(2, a),
        Contract::Signed(s) => tagged(3, s),
        Contract::Confirmed(s) => tagged(4, s),
        Contract::PreClosed(p) => tagged(5, p),
        Contract::Closed(c) => tagged(6, c),
        Contract::Refunded(s) => tagged(7, s),
        Contract::FailedAccept(f) => tagged(8, f),
        Contract::FailedSign(f) => tagged(9, f),
        Contract::Rejected(o) => tagged(10, o),
    }
}

/// The contract [`encode_contract`] wrote; a typed error for anything else.
pub fn decode_contract(bytes: &[u8]) -> Result<Contract, ManagerError> {
    let (tag, rest) = bytes
        .split_first()
        .ok_or_else(|| storage_error("an empty contract record"))?;
    Ok(match tag {
        1 => Contract::Offered(read(rest)?),
        2 => Contract::Accepted(read(rest)?),
        3 => Contract::Signed(read(rest)?),
        4 => Contract::Confirmed(read(rest)?),
        5 => Contract::PreClosed(read(rest)?),
        6 => Contract::Closed(read(rest)?),
        7 => Contract::Refunded(read(rest)?),
        8 => Contract::FailedAccept(read(rest)?),
        9 => Contract::FailedSign(read(rest)?),
        10 => Contract::Rejected(read(rest)?),
        other => return Err(storage_error(format!("unknown contract state {other}"))),
    })
}

/// A channel as stored.
pub fn encode_channel(c: &Channel) -> Vec<u8> {
    match c {
        Channel::Offered(o) => tagged(1, o),
        Channel::Accepted(a) => tagged(2, a),
        Channel::Signed(s) => tagged(3, s),
        Channel::FailedAccept(f) => tagged(4, f),
        Channel::FailedSign(f) => tagged(5, f),
        Channel::Cancelled(o) => tagged(6, o),
        Channel::Closing(c) => tagged(7, c),
        Channel::Closed(c) => tagged(8, c),
        Channel::CounterClosed(c) => tagged(9, c),
        Channel::ClosedPunished(c) => tagged(10, c),
        Channel::CollaborativelyClosed(c) => tagged(11, c),
    }
}

/// The channel [`encode_channel`] wrote.
pub fn decode_channel(bytes: &[u8]) -> Result<Channel, ManagerError> {
    let (tag, rest) = bytes
        .split_first()
        .ok_or_else(|| storage_error("an empty channel record"))?;
    Ok(match tag {
        1 => Channel::Offered(read(rest)?),
        2 => Channel::Accepted(read(rest)?),
        3 => Channel::Signed(read(rest)?),
        4 => Channel::FailedAccept(read(rest)?),
        5 => Channel::FailedSign(read(rest)?),
        6 => Channel::Cancelled(read(rest)?),
        7 => Channel::Closing(read(rest)?),
        8 => Channel::Closed(read(rest)?),
        9 => Channel::CounterClosed(read(rest)?),
        10 => Channel::ClosedPunished(read(rest)?),
        11 => Channel::CollaborativelyClosed(read(rest)?),
        other => return Err(storage_error(format!("unknown channel state {other}"))),
    })
}

/// `ddk_manager::Storage` on a [`KvStore`].
#[derive(Clone)]
pub struct KvDlcStorage {
    store: Arc<dyn KvStore>,
    ns: Namespace,
}

impl std::fmt::Debug for KvDlcStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvDlcStorage")
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

impl KvDlcStorage {
    /// The manager's state in `store`, under namespace `ns` (e.g. `dlc.contracts`).
    pub fn new(store: Arc<dyn KvStore>, ns: &str) -> Result<Self, anya_storage::StoreError> {
        Ok(Self {
            store,
            ns: Namespace::new(ns)?,
        })
    }

    /// Runs `f` on the store from tokio's blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn KvStore, &Namespace) -> Result<T, ManagerError> + Send + 'static,
    ) -> Result<T, ManagerError> {
        let (store, ns) = (Arc::clone(&self.store), self.ns.clone());
        tokio::task::spawn_blocking(move || f(&*store, &ns))
            .await
            .map_err(storage_error)?
    }

    async fn scan(&self, prefix: &'static [u8]) -> Result<Vec<Vec<u8>>, ManagerError> {
        self.run(move |store, ns| {
            let mut out = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let mut scan = Scan::prefix(prefix).limit(512);
                if let Some(a) = &after {
                    scan = scan.after(a);
                }
                let page = store.scan(ns, scan).map_err(storage_error)?;
                let Some(last) = page.last() else { break };
                after = Some(last.key.clone());
                out.extend(page.into_iter().map(|e| e.value));
            }
            Ok(out)
        })
        .await
    }

    async fn contracts(&self) -> Result<Vec<Contract>, ManagerError> {
        self.scan(CONTRACT).await?.iter().map(|v| decode_contract(v)).collect()
    }

    async fn channels(&self) -> Result<Vec<Channel>, ManagerError> {
        self.scan(CHANNEL).await?.iter().map(|v| decode_channel(v)).collect()
    }

    /// The contracts `pick` selects.
    async fn contracts_in<T>(&self, pick: fn(Contract) -> Option<T>) -> Result<Vec<T>, ManagerError> {
        Ok(self.contracts().await?.into_iter().filter_map(pick).collect())
    }
}

/// Puts `contract` in `batch` under its id, removing its temporary record once it has a final
/// id.
fn put_contract(batch: &mut WriteBatch, ns: &Namespace, contract: &Contract) -> Result<(), ManagerError> {
    let id = contract.get_id();
    let temp = contract.get_temporary_id();
    if id != temp {
        batch.delete(ns, key(CONTRACT, &temp)).map_err(storage_error)?;
    }
    batch
        .put(ns, key(CONTRACT, &id), encode_contract(contract))
        .map_err(storage_error)?;
    Ok(())
}

#[async_trait::async_trait]
impl ddk_manager::Storage for KvDlcStorage {
    async fn get_contract(&self, id: &ContractId) -> Result<Option<Contract>, ManagerError> {
        let k = key(CONTRACT, id);
        let bytes = self
            .run(move |store, ns| store.get(ns, &k).map_err(storage_error))
            .await?;
        bytes.map(|v| decode_contract(&v.value)).transpose()
    }

    async fn get_contracts(&self) -> Result<Vec<Contract>, ManagerError> {
        self.contracts().await
    }

    async fn create_contract(&self, contract: &OfferedContract) -> Result<(), ManagerError> {
        let (k, v) = (key(CONTRACT, &contract.id), tagged(1, contract));
        self.run(move |store, ns| {
            // A temporary id names one offer: never overwrite another.
            store.compare_and_swap(ns, &k, None, Some(&v)).map_err(storage_error)?;
            Ok(())
        })
        .await
    }

    async fn delete_contract(&self, id: &ContractId) -> Result<(), ManagerError> {
        let k = key(CONTRACT, id);
        self.run(move |store, ns| store.delete(ns, &k).map_err(storage_error))
            .await
    }

    async fn update_contract(&self, contract: &Contract) -> Result<(), ManagerError> {
        let mut batch = WriteBatch::new();
        put_contract(&mut batch, &self.ns, contract)?;
        self.run(move |store, _| store.write(batch).map(|_| ()).map_err(storage_error))
            .await
    }

    async fn get_contract_offers(&self) -> Result<Vec<OfferedContract>, ManagerError> {
        self.contracts_in(|c| match c {
            Contract::Offered(o) => Some(o),
            _ => None,
        })
        .await
    }

    async fn get_signed_contracts(&self) -> Result<Vec<SignedContract>, ManagerError> {
        self.contracts_in(|c| match c {
            Contract::Signed(s) => Some(s),
            _ => None,
        })
        .await
    }

    async fn get_confirmed_contracts(&self) -> Result<Vec<SignedContract>, ManagerError> {
        self.contracts_in(|c| match c {
            Contract::Confirmed(s) => Some(s),
            _ => None,
        })
        .await
    }

    async fn get_preclosed_contracts(&self) -> Result<Vec<PreClosedContract>, ManagerError> {
        self.contracts_in(|c| match c {
            Contract::PreClosed(p) => Some(p),
            _ => None,
        })
        .await
    }

    async fn upsert_channel(&self, channel: Channel, contract: Option<Contract>) -> Result<(), ManagerError> {
        let mut batch = WriteBatch::new();
        // Only these states have a temporary id to leave behind (the others never had one).
        if let Channel::Accepted(_) | Channel::Signed(_) = &channel {
            let temp = channel.get_temporary_id();
            if temp != channel.get_id() {
                batch.delete(&self.ns, key(CHANNEL, &temp)).map_err(storage_error)?;
            }
        }
        batch
            .put(&self.ns, key(CHANNEL, &channel.get_id()), encode_channel(&channel))
            .map_err(storage_error)?;
        if let Some(contract) = &contract {
            put_contract(&mut batch, &self.ns, contract)?;
        }
        self.run(move |store, _| store.write(batch).map(|_| ()).map_err(storage_error))
            .await
    }

    async fn delete_channel(&self, channel_id: &ChannelId) -> Result<(), ManagerError> {
        let k = key(CHANNEL, channel_id);
        self.run(move |store, ns| store.delete(ns, &k).map_err(storage_error))
            .await
    }

    async fn get_channel(&self, channel_id: &ChannelId) -> Result<Option<Channel>, ManagerError> {
        let k = key(CHANNEL, channel_id);
        let bytes = self
            .run(move |store, ns| store.get(ns, &k).map_err(storage_error))
            .await?;
        bytes.map(|v| decode_channel(&v.value)).transpose()
    }

    async fn get_signed_channels(
        &self,
        channel_state: Option<SignedChannelStateType>,
    ) -> Result<Vec<SignedChannel>, ManagerError> {
        Ok(self
            .channels()
            .await?
            .into_iter()
            .filter_map(|c| match c {
                Channel::Signed(s) if channel_state.as_ref().is_none_or(|t| s.state.is_of_type(t)) => Some(s),
                _ => None,
            })
            .collect())
    }

    async fn get_offered_channels(&self) -> Result<Vec<OfferedChannel>, ManagerError> {
        Ok(self
            .channels()
            .await?
            .into_iter()
            .filter_map(|c| match c {
                Channel::Offered(o) => Some(o),
                _ => None,
            })
            .collect())
    }

    async fn persist_chain_monitor(&self, monitor: &ChainMonitor) -> Result<(), ManagerError> {
        let v = monitor.encode();
        self.run(move |store, ns| store.put(ns, MONITOR, &v).map(|_| ()).map_err(storage_error))
            .await
    }

    async fn get_chain_monitor(&self) -> Result<Option<ChainMonitor>, ManagerError> {
        let bytes = self
            .run(|store, ns| store.get(ns, MONITOR).map_err(storage_error))
            .await?;
        bytes.map(|v| read(&v.value)).transpose()
    }
}
