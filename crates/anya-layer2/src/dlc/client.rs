//! A client for DLC oracles over HTTP, in either route family:
//!
//! - **kormir**: `GET /pubkey` (`{"pubkey": …}`), `GET /announcement/{event_id}` and
//!   `GET /attestation/{event_id}` (the messages as ddk-messages' JSON);
//! - **p2pderivatives**: `GET /oracle/publickey` (`{"publicKey": …}`),
//!   `GET /asset/{asset}/announcement/{RFC 3339 time}` and
//!   `GET /asset/{asset}/attestation/{time}` (`{"eventId", "signatures", "values"}`), where an
//!   event id is the asset followed by the unix maturity (`btcusd1624943400`).
//!
//! Everything the client returns is verified first: an announcement must be signed by the
//! oracle's key over the spec's tagged hash and have the right nonce count; an attestation
//! must verify, signature by signature, against that announcement's nonces. A server that
//! answers otherwise gets [`ClientError::Invalid`], never a message the caller might trust.

use std::time::Duration;

use ddk_messages::oracle_msgs::{OracleAnnouncement, OracleAttestation};
use secp256k1::schnorr::Signature;
use secp256k1::{Secp256k1, VerifyOnly, XOnlyPublicKey};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The most bytes read from one answer.
pub const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

/// Which routes the oracle serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteFamily {
    /// kormir's routes.
    Kormir,
    /// The p2pderivatives oracle's routes.
    P2pDerivatives,
}

/// Why the client returned nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request failed (connection, timeout, TLS).
    #[error("{url}: {reason}")]
    Request {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A status other than 200 (404: no such event, or not attested yet).
    #[error("{url}: status {status}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// An answer that is not what the route family returns.
    #[error("{url}: malformed answer: {reason}")]
    Malformed {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A well-formed answer that does not verify (wrong key, bad signature, other event).
    #[error("{url}: {reason}")]
    Invalid {
        /// The URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// An event id the p2pderivatives routes cannot express (no unix time at its end).
    #[error("event id {event_id:?}: {reason}")]
    EventId {
        /// The id.
        event_id: String,
        /// Why.
        reason: String,
    },
}

/// A verified connection to one oracle.
pub struct OracleClient {
    base: String,
    family: RouteFamily,
    agent: ureq::Agent,
    public_key: XOnlyPublicKey,
    secp: Secp256k1<VerifyOnly>,
}

impl std::fmt::Debug for OracleClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OracleClient")
            .field("base", &self.base)
            .field("family", &self.family)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct KormirPubkey {
    pubkey: XOnlyPublicKey,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct P2pdPubkey {
    public_key: XOnlyPublicKey,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct P2pdAttestation {
    event_id: String,
    signatures: Vec<Signature>,
    values: Vec<String>,
}

fn fetch_json<T: DeserializeOwned>(agent: &ureq::Agent, url: String) -> Result<T, ClientError> {
    let mut response = agent
        .get(&url)
        .header("accept", "application/json")
        .call()
        .map_err(|e| ClientError::Request {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(ClientError::Status { url, status });
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
        .map_err(|e| ClientError::Malformed {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Malformed {
        url,
        reason: e.to_string(),
    })
}

/// Splits a p2pderivatives event id into its asset and maturity (the trailing digits).
pub fn split_p2pd_event_id(event_id: &str) -> Result<(&str, i64), ClientError> {
    let bad = |reason: &str| ClientError::EventId {
        event_id: event_id.to_owned(),
        reason: reason.to_owned(),
    };
    let digits = event_id.bytes().rev().take_while(u8::is_ascii_digit).count();
    let (asset, time) = event_id.split_at(event_id.len() - digits);
    if asset.is_empty() || time.is_empty() {
        return Err(bad("not <asset><unix time>"));
    }
    let time: i64 = time.parse().map_err(|_| bad("the time does not fit"))?;
    Ok((asset, time))
}

/// `secs` as the RFC 3339 UTC time the p2pderivatives routes use (`2021-06-29T05:10:00Z`).
pub fn rfc3339(secs: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(secs).ok()?.format(&Rfc3339).ok()
}

/// The unix time of an RFC 3339 time.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

impl OracleClient {
    /// Connects to the oracle at `base_url` (`http://host:port`, or with a path prefix) and
    /// reads its public key.
    pub fn connect(base_url: &str, family: RouteFamily, timeout: Duration) -> Result<Self, ClientError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let base = base_url.trim_end_matches('/').to_owned();
        let public_key = match family {
            RouteFamily::Kormir => fetch_json::<KormirPubkey>(&agent, format!("{base}/pubkey"))?.pubkey,
            RouteFamily::P2pDerivatives => {
                fetch_json::<P2pdPubkey>(&agent, format!("{base}/oracle/publickey"))?.public_key
            }
        };
        Ok(Self {
            base,
            family,
            agent,
            public_key,
            secp: Secp256k1::verification_only(),
        })
    }

    /// The oracle's public key, as it answered on connecting.
    pub fn public_key(&self) -> XOnlyPublicKey {
        self.public_key
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        fetch_json(&self.agent, self.url(path))
    }

    fn paths(&self, event_id: &str) -> Result<(String, String), ClientError> {
        Ok(match self.family {
            RouteFamily::Kormir => {
                super::oracle::check_event_id(event_id).map_err(|e| ClientError::EventId {
                    event_id: event_id.to_owned(),
                    reason: e.to_string(),
                })?;
                (format!("/announcement/{event_id}"), format!("/attestation/{event_id}"))
            }
            RouteFamily::P2pDerivatives => {
                let (asset, time) = split_p2pd_event_id(event_id)?;
                let time = rfc3339(time).ok_or_else(|| ClientError::EventId {
                    event_id: event_id.to_owned(),
                    reason: "the time is out of range".to_owned(),
                })?;
                (
                    format!("/asset/{asset}/announcement/{time}"),
                    format!("/asset/{asset}/attestation/{time}"),
                )
            }
        })
    }

    /// The announcement of `event_id`, verified: the oracle's key, its signature over the
    /// tagged hash, its nonce count, its event id.
    pub fn announcement(&self, event_id: &str) -> Result<OracleAnnouncement, ClientError> {
        let (path, _) = self.paths(event_id)?;
        let announcement: OracleAnnouncement = self.get(&path)?;
        let invalid = |reason: String| ClientError::Invalid {
            url: self.url(&path),
            reason,
        };
        if announcement.oracle_public_key != self.public_key {
            return Err(invalid("signed by another oracle".to_owned()));
        }
        if announcement.oracle_event.event_id != event_id {
            return Err(invalid(format!(
                "the announcement is for {:?}",
                announcement.oracle_event.event_id
            )));
        }
        announcement
            .validate(&self.secp)
            .map_err(|e| invalid(format!("{e:?}")))?;
        Ok(announcement)
    }

    /// The attestation of `event_id`, verified against its announcement (read and verified
    /// first); [`ClientError::Status`] 404 while it is not attested.
    pub fn attestation(&self, event_id: &str) -> Result<OracleAttestation, ClientError> {
        let announcement = self.announcement(event_id)?;
        self.attestation_for(&announcement)
    }

    /// The attestation of `announcement`'s event, verified against it.
    pub fn attestation_for(&self, announcement: &OracleAnnouncement) -> Result<OracleAttestation, ClientError> {
        let event_id = &announcement.oracle_event.event_id;
        let (_, path) = self.paths(event_id)?;
        let attestation = match self.family {
            RouteFamily::Kormir => self.get::<OracleAttestation>(&path)?,
            RouteFamily::P2pDerivatives => {
                let a: P2pdAttestation = self.get(&path)?;
                if a.event_id != *event_id {
                    return Err(ClientError::Invalid {
                        url: self.url(&path),
                        reason: format!("the attestation is for {:?}", a.event_id),
                    });
                }
                OracleAttestation {
                    event_id: a.event_id,
                    oracle_public_key: self.public_key,
                    signatures: a.signatures,
                    outcomes: a.values,
                }
            }
        };
        let invalid = |reason: String| ClientError::Invalid {
            url: self.url(&path),
            reason,
        };
        if attestation.event_id != *event_id {
            return Err(invalid(format!("the attestation is for {:?}", attestation.event_id)));
        }
        if attestation.signatures.len() != announcement.oracle_event.oracle_nonces.len() {
            return Err(invalid(format!(
                "{} signatures for {} nonces",
                attestation.signatures.len(),
                announcement.oracle_event.oracle_nonces.len()
            )));
        }
        attestation
            .validate(&self.secp, announcement)
            .map_err(|e| invalid(format!("{e:?}")))?;
        Ok(attestation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p2pd_event_ids_and_times() {
        assert_eq!(
            split_p2pd_event_id("btcusd1624943400").unwrap(),
            ("btcusd", 1_624_943_400)
        );
        assert!(split_p2pd_event_id("btcusd").is_err());
        assert!(split_p2pd_event_id("1624943400").is_err());
        assert!(split_p2pd_event_id("x99999999999999999999999").is_err());
        assert_eq!(rfc3339(1_624_943_400).unwrap(), "2021-06-29T05:10:00Z");
        assert_eq!(parse_rfc3339("2021-06-29T05:10:00Z"), Some(1_624_943_400));
        assert_eq!(parse_rfc3339("2021-06-29T07:10:00+02:00"), Some(1_624_943_400));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
