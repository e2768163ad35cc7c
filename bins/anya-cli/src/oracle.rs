//! `anya oracle …`: a dlcspecs DLC oracle whose key and nonces stay in the keystore.
//!
//! Wiring only: announcing, attesting and the one-outcome guarantee are
//! `anya_layer2::dlc::Oracle`'s.

use std::path::Path;
use std::sync::Arc;

use anya_core_types::SystemClock;
use anya_hsm::{HsmError, HsmProvider};
use anya_layer2::dlc::digits::Digits;
use anya_layer2::dlc::messages::{
    DigitDecompositionEventDescriptor, EventDescriptor, OracleAnnouncement, OracleAttestation,
};
use anya_layer2::dlc::{EventKind, EventSummary, Oracle, OracleOptions};
use anya_storage::KvStore;
use clap::{Args, Subcommand};
use lightning::util::ser::Writeable;

use crate::onchain::chain;
use crate::{open_store, to_hex, unlocked_in, CliError};

pub(crate) const ORACLE_ABOUT: &str = "\
A DLC oracle (dlcspecs) whose key `oracle` and every nonce stay in the keystore.

`event create-enum` and `event create-numeric` announce an event: a nonce for each outcome \
(each digit, and the sign, of a numeric event) is committed in the keystore and the \
announcement is signed. `attest` signs the outcome once the event's maturity has come. An event \
is attested for one outcome only: the outcome is fixed in the store before anything is signed, \
another outcome is refused, and the same outcome again prints the same attestation.

Messages are printed as JSON (the camelCase form of ddk-messages, which kormir also serves), or \
with --hex in the dlcspecs serialization: the message's fields, without the TLV type and length \
that a contract offer wraps an announcement in (what ddk-messages and rust-dlc read).

Every oracle command needs the passphrase and a rollback anchor (--anchor-dir or \
ANYA_ANCHOR_DIR). A nonce may sign one message only, and after the data directory is restored \
from a backup only the anchor still knows which: a second message signed with a spent nonce \
gives away the oracle's key. Keep the anchor where restores of the data directory do not reach.

Example:
  export ANYA_ANCHOR_DIR=/mnt/other-disk/anya-anchor
  anya oracle init                                     # prints the x-only public key
  anya oracle event create-enum match-42 --maturity 1767225600 --outcome home --outcome away
  anya oracle event create-numeric btcusd-1767225600 --maturity 1767225600 --digits 20 --unit usd
  anya oracle attest match-42 --outcome home
  anya oracle attest btcusd-1767225600 --value 97250
  anya oracle show                                     # every event and its outcome
  anya oracle show match-42 --hex";

#[derive(Debug, Subcommand)]
pub(crate) enum OracleCommand {
    /// Make the oracle's key (`oracle`, secp256k1, not exportable) if the keystore has none;
    /// prints its x-only public key in hex.
    Init,
    /// Announce events.
    #[command(subcommand)]
    Event(EventCommand),
    /// Attest an event's outcome; prints the attestation.
    ///
    /// Refused before the event's maturity, and for an event already attested with another
    /// outcome. The same outcome again prints the same attestation.
    Attest {
        /// The event id.
        id: String,
        #[command(flatten)]
        outcome: OutcomeArgs,
        /// Print the dlcspecs serialization in hex instead of JSON.
        #[arg(long)]
        hex: bool,
    },
    /// Show an event's announcement and attestation (`null` until attested), as JSON; without
    /// an id, list every event: id, maturity, kind, outcome.
    Show {
        /// The event id.
        id: Option<String>,
        /// Print the announcement in hex on one line, and the attestation, once there is one,
        /// on the next.
        #[arg(long, requires = "id")]
        hex: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EventCommand {
    /// Announce an event with enumerated outcomes; prints the announcement.
    CreateEnum {
        /// The event id (no whitespace or `/`, up to 256 bytes).
        id: String,
        /// When the event may be attested (unix seconds).
        #[arg(long, value_name = "UNIX")]
        maturity: u32,
        /// An outcome (repeat for each, in order).
        #[arg(long = "outcome", required = true)]
        outcomes: Vec<String>,
        /// Print the dlcspecs serialization in hex instead of JSON.
        #[arg(long)]
        hex: bool,
    },
    /// Announce a numeric event (digit decomposition); prints the announcement.
    ///
    /// The attested integer v means v × 10^precision units. Each digit (and the sign) has
    /// its own nonce and signature.
    CreateNumeric {
        /// The event id (no whitespace or `/`, up to 256 bytes).
        id: String,
        /// When the event may be attested (unix seconds).
        #[arg(long, value_name = "UNIX")]
        maturity: u32,
        /// How many digits (1 to 128).
        #[arg(long)]
        digits: u16,
        /// The base of the digits.
        #[arg(long, default_value_t = 2)]
        base: u16,
        /// Whether the value can be negative (a sign outcome comes first).
        #[arg(long)]
        signed: bool,
        /// The power of ten one unit of the attested integer stands for.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        precision: i32,
        /// The unit of the value (`usd/btc`, `usd`).
        #[arg(long, default_value = "")]
        unit: String,
        /// Print the dlcspecs serialization in hex instead of JSON.
        #[arg(long)]
        hex: bool,
    },
}

/// The outcome of `attest`: a string of an enum event, or a number of a numeric one.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct OutcomeArgs {
    /// The outcome of an enum event (one it lists).
    #[arg(long)]
    outcome: Option<String>,
    /// The value of a numeric event; clamped, as dlcspecs says, to what its digits hold.
    #[arg(long, allow_negative_numbers = true)]
    value: Option<i64>,
}

/// The oracle on the unlocked keystore in `dir`. Only `init` makes the key: the other
/// commands refuse a keystore without one rather than quietly make it.
fn open(dir: &Path, init: bool) -> Result<Oracle, CliError> {
    let store: Arc<dyn KvStore> = open_store(dir, false)?;
    let hsm = unlocked_in(Arc::clone(&store))?;
    let options = OracleOptions::default();
    let missing = match hsm.key_info(&options.key) {
        Ok(_) => false,
        Err(HsmError::KeyNotFound { .. }) => true,
        Err(e) => return Err(e.into()),
    };
    if missing && !init {
        return Err(CliError::Usage(
            "the keystore has no oracle key (run `anya oracle init` first)".to_owned(),
        ));
    }
    let key = options.key.clone();
    let oracle = Oracle::open(Arc::new(hsm), store, Arc::new(SystemClock), options).map_err(CliError::chain)?;
    if missing {
        eprintln!("created the oracle key `{key}` in the keystore");
    }
    Ok(oracle)
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(value).map_err(|e| CliError::Message(format!("cannot write JSON: {e}")))
}

fn print_message<T: serde::Serialize + Writeable>(message: &T, hex: bool) -> Result<(), CliError> {
    if hex {
        println!("{}", to_hex(&message.encode()));
    } else {
        println!("{}", json(message)?);
    }
    Ok(())
}

/// The layout of a numeric event; `None` for an enum event.
fn digits_of(
    announcement: &OracleAnnouncement,
) -> Result<Option<(Digits, &DigitDecompositionEventDescriptor)>, CliError> {
    match &announcement.oracle_event.event_descriptor {
        EventDescriptor::EnumEvent(_) => Ok(None),
        EventDescriptor::DigitDecompositionEvent(d) => {
            let digits = Digits::new(d.base, d.nb_digits, d.is_signed).map_err(CliError::chain)?;
            Ok(Some((digits, d)))
        }
    }
}

pub(crate) fn oracle(dir: &Path, anchored: bool, command: OracleCommand) -> Result<(), CliError> {
    // Before the store is opened or a passphrase asked for: nothing happens without an anchor.
    if !anchored {
        return Err(CliError::Usage(
            "the oracle needs a rollback anchor: pass --anchor-dir DIR or set ANYA_ANCHOR_DIR (a data directory \
             restored from a backup could otherwise sign a second outcome with a spent nonce, which gives \
             away the oracle key)"
                .to_owned(),
        ));
    }
    match command {
        OracleCommand::Init => {
            let oracle = open(dir, true)?;
            println!("{}", oracle.public_key());
        }
        OracleCommand::Event(EventCommand::CreateEnum {
            id,
            maturity,
            outcomes,
            hex,
        }) => {
            let oracle = open(dir, false)?;
            let announcement = oracle
                .create_enum_event(&id, maturity, outcomes)
                .map_err(CliError::chain)?;
            print_message(&announcement, hex)?;
        }
        OracleCommand::Event(EventCommand::CreateNumeric {
            id,
            maturity,
            digits,
            base,
            signed,
            precision,
            unit,
            hex,
        }) => {
            let oracle = open(dir, false)?;
            let descriptor = DigitDecompositionEventDescriptor {
                base,
                is_signed: signed,
                unit,
                precision,
                nb_digits: digits,
            };
            let announcement = oracle
                .create_numeric_event(&id, maturity, descriptor)
                .map_err(CliError::chain)?;
            print_message(&announcement, hex)?;
        }
        OracleCommand::Attest { id, outcome, hex } => {
            let oracle = open(dir, false)?;
            let attestation = match (outcome.outcome, outcome.value) {
                (Some(outcome), _) => oracle.attest_enum(&id, &outcome).map_err(CliError::chain)?,
                (None, Some(value)) => {
                    let attestation = oracle.attest_numeric(&id, value).map_err(CliError::chain)?;
                    note_clamped(&oracle.announcement(&id).map_err(CliError::chain)?, &attestation, value)?;
                    attestation
                }
                (None, None) => return Err(CliError::Usage("pass --outcome or --value".to_owned())),
            };
            print_message(&attestation, hex)?;
        }
        OracleCommand::Show { id: Some(id), hex } => {
            let oracle = open(dir, false)?;
            let announcement = oracle.announcement(&id).map_err(CliError::chain)?;
            let attestation = oracle.attestation(&id).map_err(CliError::chain)?;
            if hex {
                println!("{}", to_hex(&announcement.encode()));
                if let Some(attestation) = &attestation {
                    println!("{}", to_hex(&attestation.encode()));
                }
            } else {
                let to_value = |v: serde_json::Result<serde_json::Value>| {
                    v.map_err(|e| CliError::Message(format!("cannot write JSON: {e}")))
                };
                let mut shown = serde_json::Map::new();
                shown.insert(
                    "announcement".to_owned(),
                    to_value(serde_json::to_value(&announcement))?,
                );
                shown.insert("attestation".to_owned(), to_value(serde_json::to_value(&attestation))?);
                println!("{}", json(&shown)?);
            }
        }
        OracleCommand::Show { id: None, .. } => {
            let oracle = open(dir, false)?;
            let mut after: Option<String> = None;
            loop {
                let page = oracle.events(after.as_deref(), 256).map_err(CliError::chain)?;
                let Some(last) = page.last() else { break };
                after = Some(last.event_id.clone());
                for event in &page {
                    println!("{}", event_line(&oracle, event)?);
                }
            }
        }
    }
    Ok(())
}

/// Says on standard error when `value` was clamped to what the event's digits hold.
fn note_clamped(
    announcement: &OracleAnnouncement,
    attestation: &OracleAttestation,
    value: i64,
) -> Result<(), CliError> {
    if let Some((digits, _)) = digits_of(announcement)? {
        let attested = digits.compose(&attestation.outcomes).map_err(CliError::chain)?;
        if attested != value {
            eprintln!("attested {attested}: {value} does not fit the event's digits and was clamped, as dlcspecs says");
        }
    }
    Ok(())
}

/// `id  maturity  kind  outcome`, tab-separated; a numeric outcome as its value.
fn event_line(oracle: &Oracle, event: &EventSummary) -> Result<String, CliError> {
    let kind = match (event.kind, &event.asset) {
        (EventKind::Enum, _) => "enum".to_owned(),
        (EventKind::Numeric, None) => "numeric".to_owned(),
        (EventKind::Numeric, Some(asset)) => format!("price:{asset}"),
    };
    let outcome = match &event.outcomes {
        None => "not attested".to_owned(),
        Some(outcomes) => {
            let announcement = oracle.announcement(&event.event_id).map_err(CliError::chain)?;
            match digits_of(&announcement)? {
                None => format!("attested {}", outcomes.join(",")),
                Some((digits, d)) => {
                    let value = digits
                        .compose(outcomes)
                        .map_err(|e| CliError::Message(format!("event {:?}: {}", event.event_id, chain(&e))))?;
                    let exponent = if d.precision == 0 {
                        String::new()
                    } else {
                        format!("e{}", d.precision)
                    };
                    let unit = if d.unit.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", d.unit)
                    };
                    format!("attested {value}{exponent}{unit}")
                }
            }
        }
    };
    Ok(format!("{}\t{}\t{kind}\t{outcome}", event.event_id, event.maturity))
}
