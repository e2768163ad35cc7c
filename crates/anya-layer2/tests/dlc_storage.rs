//! The contract manager's `Storage` on anya's stores: the same cases on SQLite, RocksDB and
//! PostgreSQL (`ANYA_TEST_POSTGRES_URL`, required in CI), with the contracts of the dlcspecs
//! test vectors' offers.

mod common;

use std::sync::Arc;

use anya_layer2::dlc::contracts::KvDlcStorage;
use anya_storage::{KvStore, Namespace};
use ddk_manager::chain_monitor::ChainMonitor;
use ddk_manager::channel::offered_channel::OfferedChannel;
use ddk_manager::channel::party_points::PartyBasePoints;
use ddk_manager::channel::Channel;
use ddk_manager::contract::offered_contract::OfferedContract;
use ddk_manager::contract::Contract;
use ddk_manager::Storage;
use ddk_messages::OfferDlc;
use secp256k1::PublicKey;

const NS: &str = "dlc.contracts";

/// The offered contract of every dlcspecs test vector, as the accepting party receives it.
fn vector_offers() -> Vec<OfferedContract> {
    let dir = format!("{}dlc/test_vectors", common::VECTORS);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            // The vectors' binary form predates ddk-messages' (it is refused as an unknown
            // required feature), and their JSON names the offer's payout `localPayout`, which
            // ddk-messages calls `offerPayout`; otherwise it is the same message.
            let mut message = v["offer_message"]["message"].clone();
            rename_key(&mut message, "localPayout", "offerPayout");
            let offer: OfferDlc = serde_json::from_value(message).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let counter_party: PublicKey = offer.funding_pubkey;
            OfferedContract::try_from_offer_dlc(&offer, counter_party, [7; 32]).unwrap()
        })
        .collect()
}

fn rename_key(v: &mut serde_json::Value, from: &str, to: &str) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(x) = map.remove(from) {
                map.insert(to.to_owned(), x);
            }
            map.values_mut().for_each(|c| rename_key(c, from, to));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|c| rename_key(c, from, to)),
        _ => {}
    }
}

fn same(a: &Contract, b: &Contract) -> bool {
    anya_layer2::dlc::contracts::storage::encode_contract(a) == anya_layer2::dlc::contracts::storage::encode_contract(b)
}

#[test]
fn contracts_channels_and_the_chain_monitor_on_every_backend() {
    // Opened outside the runtime: the PostgreSQL client runs one of its own.
    let backends = common::backends("dlc_storage");
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(cases(&backends));
    // Dropped here, outside the runtime, for the same reason.
    drop(backends);
}

async fn cases(backends: &[common::Backend]) {
    let offers = vector_offers();
    assert_eq!(offers.len(), 14);
    for common::Backend { name, store, .. } in backends {
        let name = *name;
        let s = KvDlcStorage::new(Arc::clone(store), NS).unwrap();
        for o in &offers {
            s.create_contract(o).await.unwrap();
            // One offer per temporary id.
            assert!(s.create_contract(o).await.is_err(), "{name}");
        }
        assert_eq!(s.get_contract_offers().await.unwrap().len(), offers.len(), "{name}");
        let first = &offers[0];
        let got = s.get_contract(&first.id).await.unwrap().expect("stored");
        assert!(
            same(&got, &Contract::Offered(first.clone())),
            "{name}: the offer reads back as written"
        );

        // Rejected: no longer an offer, still a contract.
        s.update_contract(&Contract::Rejected(first.clone())).await.unwrap();
        assert_eq!(s.get_contract_offers().await.unwrap().len(), offers.len() - 1, "{name}");
        assert!(matches!(
            s.get_contract(&first.id).await.unwrap(),
            Some(Contract::Rejected(_))
        ));
        assert_eq!(s.get_contracts().await.unwrap().len(), offers.len());
        assert!(s.get_signed_contracts().await.unwrap().is_empty());
        assert!(s.get_confirmed_contracts().await.unwrap().is_empty());
        assert!(s.get_preclosed_contracts().await.unwrap().is_empty());
        s.delete_contract(&first.id).await.unwrap();
        assert!(s.get_contract(&first.id).await.unwrap().is_none(), "{name}");

        // A channel offer and its contract, in one batch.
        let point = offers[1].offer_params.fund_pubkey;
        let channel = OfferedChannel {
            offered_contract_id: offers[1].id,
            temporary_channel_id: [9; 32],
            party_points: PartyBasePoints {
                own_basepoint: point,
                revocation_basepoint: point,
                publish_basepoint: point,
            },
            per_update_point: point,
            offer_per_update_seed: None,
            is_offer_party: false,
            counter_party: point,
            cet_nsequence: 288,
        };
        s.upsert_channel(
            Channel::Offered(channel.clone()),
            Some(Contract::Rejected(offers[1].clone())),
        )
        .await
        .unwrap();
        let offered = s.get_offered_channels().await.unwrap();
        assert_eq!(offered.len(), 1, "{name}");
        assert_eq!(
            anya_layer2::dlc::contracts::storage::encode_channel(&Channel::Offered(offered[0].clone())),
            anya_layer2::dlc::contracts::storage::encode_channel(&Channel::Offered(channel.clone())),
            "{name}: the channel reads back as written"
        );
        assert!(matches!(
            s.get_channel(&[9; 32]).await.unwrap(),
            Some(Channel::Offered(_))
        ));
        assert!(matches!(
            s.get_contract(&offers[1].id).await.unwrap(),
            Some(Contract::Rejected(_))
        ));
        assert!(s.get_signed_channels(None).await.unwrap().is_empty());
        s.delete_channel(&[9; 32]).await.unwrap();
        assert!(s.get_channel(&[9; 32]).await.unwrap().is_none());

        // The chain monitor.
        assert!(s.get_chain_monitor().await.unwrap().is_none());
        let monitor = ChainMonitor::new(101);
        s.persist_chain_monitor(&monitor).await.unwrap();
        assert_eq!(s.get_chain_monitor().await.unwrap(), Some(monitor), "{name}");

        // Bytes that are not a record the storage wrote are a typed error, not a panic.
        let ns = Namespace::new(NS).unwrap();
        let k = [b"c/".as_slice(), offers[2].id.as_slice()].concat();
        for junk in [&b""[..], &[0xff, 1, 2][..], &[1, 0, 0][..]] {
            let (store, ns, k) = (Arc::clone(store), ns.clone(), k.clone());
            tokio::task::spawn_blocking(move || store.put(&ns, &k, junk).unwrap())
                .await
                .unwrap();
            assert!(s.get_contract(&offers[2].id).await.is_err(), "{name}: {junk:?}");
            assert!(s.get_contracts().await.is_err());
        }
    }
}
