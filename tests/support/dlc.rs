//! The DLC kill test's contract, clock and state names, shared by the test and its child.

use anya_core_types::{Clock, UnixTime};
use bitcoin::Amount;
use ddk_dlc::{EnumerationPayout, Payout};
use ddk_manager::contract::contract_input::{ContractInput, ContractInputInfo, OracleInput};
use ddk_manager::contract::enum_descriptor::EnumDescriptor;
use ddk_manager::contract::ContractDescriptor;
use secp256k1::XOnlyPublicKey;

/// Each side's collateral.
pub const COLLATERAL: Amount = Amount::from_sat(100_000_000);

/// The coin contract's outcomes and payouts (offer party, accepting party).
pub const PAYOUTS: [(&str, Amount, Amount); 2] = [
    ("heads", Amount::from_sat(160_000_000), Amount::from_sat(40_000_000)),
    ("tails", Amount::from_sat(30_000_000), Amount::from_sat(170_000_000)),
];

/// A clock that always says the same time.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub u64);

impl Clock for FixedClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_secs(self.0)
    }
}

/// The enum contract on `event` of the oracle `oracle`: [`PAYOUTS`], [`COLLATERAL`] each,
/// 2 sat/vB.
pub fn coin_contract(oracle: XOnlyPublicKey, event: &str) -> ContractInput {
    ContractInput {
        offer_collateral: COLLATERAL,
        accept_collateral: COLLATERAL,
        fee_rate: 2,
        contract_infos: vec![ContractInputInfo {
            contract_descriptor: ContractDescriptor::Enum(EnumDescriptor {
                outcome_payouts: PAYOUTS
                    .iter()
                    .map(|(outcome, offer, accept)| EnumerationPayout {
                        outcome: (*outcome).to_owned(),
                        payout: Payout {
                            offer: *offer,
                            accept: *accept,
                        },
                    })
                    .collect(),
            }),
            oracles: OracleInput {
                public_keys: vec![oracle],
                event_id: event.to_owned(),
                threshold: 1,
            },
        }],
        contract_flags: 0,
    }
}
