//! Scheduled price events: announced ahead at fixed intervals, attested at maturity.
//!
//! An asset scheduled every `interval_secs` has one event per multiple of the interval, with
//! the id `<asset><maturity>` (the p2pderivatives form: `btcusd1700000000`), so both route
//! families find it. [`PriceSchedule::tick`] announces the next `ahead` events that are not yet
//! announced and attests, from the asset's price sources, every matured one of the last
//! `catch_up` intervals that is not yet attested. Ticks are idempotent and safe to run from
//! several processes at once: announcing is "only if absent" and attesting is "only one
//! outcome".

use anya_core_types::UnixTime;
use ddk_messages::oracle_msgs::{DigitDecompositionEventDescriptor, OracleAttestation};
use serde::{Deserialize, Serialize};

use super::{Oracle, OracleError};

/// One asset's schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceSchedule {
    /// The asset (the price feed's name); the p2pderivatives client takes the first six
    /// characters of an event id as the asset, so six-character names (`btcusd`) suit it.
    pub asset: String,
    /// Seconds between maturities (maturities are multiples of it).
    pub interval_secs: u64,
    /// How many upcoming events are kept announced.
    pub ahead: u32,
    /// How many past intervals a tick looks back for unattested events.
    pub catch_up: u32,
    /// Digits in `base`; the attested integer `v` means `v × 10^precision` `unit`.
    pub base: u16,
    /// Number of digits.
    pub nb_digits: u16,
    /// Whether the value has a sign.
    pub signed: bool,
    /// Power of ten of one unit of the attested integer.
    pub precision: i32,
    /// The unit (`usd/btc`).
    pub unit: String,
}

/// The id of `asset`'s event maturing at `maturity`.
pub fn event_id(asset: &str, maturity: u32) -> String {
    format!("{asset}{maturity}")
}

/// What one tick did.
#[derive(Debug, Default)]
pub struct Tick {
    /// Events announced, with their maturities.
    pub announced: Vec<(String, u32)>,
    /// Attestations made.
    pub attested: Vec<OracleAttestation>,
    /// Events that could not be announced or attested, and why (a price refusal is also in
    /// the HSM audit chain); retried on the next tick.
    pub failed: Vec<(String, OracleError)>,
}

impl PriceSchedule {
    /// The digit layout of its events.
    pub fn descriptor(&self) -> DigitDecompositionEventDescriptor {
        DigitDecompositionEventDescriptor {
            base: self.base,
            is_signed: self.signed,
            unit: self.unit.clone(),
            precision: self.precision,
            nb_digits: self.nb_digits,
        }
    }

    /// The maturities a tick at `now` announces: the next `ahead` multiples of the interval
    /// after `now`.
    pub fn upcoming(&self, now: UnixTime) -> Vec<u32> {
        let interval = self.interval_secs.max(1);
        let first = (now.as_secs() / interval + 1) * interval;
        (0..u64::from(self.ahead))
            .map_while(|i| u32::try_from(first + i * interval).ok())
            .collect()
    }

    /// The maturities a tick at `now` attests when they are announced and not yet attested:
    /// the last `catch_up` multiples of the interval up to `now`, oldest first.
    pub fn matured(&self, now: UnixTime) -> Vec<u32> {
        let interval = self.interval_secs.max(1);
        let last = now.as_secs() / interval;
        (0..u64::from(self.catch_up.max(1)))
            .filter_map(|back| last.checked_sub(back))
            .filter_map(|k| u32::try_from(k * interval).ok())
            .filter(|m| *m > 0)
            .rev()
            .collect()
    }

    /// Announces what is due and attests what matured.
    pub fn tick(&self, oracle: &Oracle, now: UnixTime) -> Tick {
        let mut tick = Tick::default();
        for maturity in self.upcoming(now) {
            let id = event_id(&self.asset, maturity);
            match oracle.create_price_event(&id, maturity, &self.asset, self.descriptor()) {
                Ok(_) => tick.announced.push((id, maturity)),
                Err(OracleError::EventExists { .. }) => {}
                Err(e) => tick.failed.push((id, e)),
            }
        }
        for maturity in self.matured(now) {
            let id = event_id(&self.asset, maturity);
            match oracle.attestation(&id) {
                Ok(Some(_)) | Err(OracleError::EventNotFound { .. }) => continue,
                Ok(None) => {}
                Err(e) => {
                    tick.failed.push((id, e));
                    continue;
                }
            }
            match oracle.attest_price(&id) {
                Ok(attestation) => tick.attested.push(attestation),
                Err(e) => tick.failed.push((id, e)),
            }
        }
        tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> PriceSchedule {
        PriceSchedule {
            asset: "btcusd".into(),
            interval_secs: 3600,
            ahead: 3,
            catch_up: 2,
            base: 2,
            nb_digits: 20,
            signed: false,
            precision: 0,
            unit: "usd/btc".into(),
        }
    }

    #[test]
    fn maturities() {
        let s = schedule();
        let now = UnixTime::from_secs(7200 + 10);
        assert_eq!(s.upcoming(now), [10_800, 14_400, 18_000]);
        assert_eq!(s.matured(now), [3600, 7200]);
        assert_eq!(s.matured(UnixTime::from_secs(7200)), [3600, 7200]);
        assert_eq!(event_id("btcusd", 1_624_943_400), "btcusd1624943400");
    }
}
