//! CET adaptor signatures in bulk: create and verify the tens of thousands of adaptor
//! signatures of a numeric contract on every core.
//!
//! A numeric contract with several oracles has one adaptor signature per (CET, oracle digit
//! path): 17 binary digits, 3 oracles of which 2 must agree, with difference parameters, is
//! 60,114 of them over 10,001 CETs (`benches/benches/dlc_cets.rs`). ddk-dlc makes and checks
//! them one at a time, and computes the CET's sighash again for each one.
//! [`CetBatch`] computes each CET's sighash once and splits the signatures over the cores
//! (scoped threads that take chunks in order, so the result and the first bad index do not
//! depend on scheduling). [`OutcomePoints`] precomputes each oracle's outcome point per
//! digit and per digit value. An adaptor point is then a sum of those, one per digit of
//! each attesting oracle's prefix.
//!
//! Encryption is deterministic: `EcdsaAdaptorSignature::encrypt_no_aux_rand`, the
//! secp256k1-zkp call that ddk-dlc itself uses without `std`. The same inputs give the same
//! bytes on every run and on every number of threads. Auxiliary randomness hardens the nonce
//! against side channels; it is not needed for security, as the secp256k1-zkp documentation
//! says. ddk-dlc's `std` build draws it from `thread_rng` for every signature.
//!
//! Verification is parallel but not batched. An ECDSA adaptor signature carries a DLEQ proof
//! as a challenge and a response `(e, s)`. To check it, the verifier must recompute both
//! commitments, `s·G − e·R'` and `s·Y − e·R`, and hash them, for every signature. A random
//! linear combination of many proofs has no hash to compare with, so the proofs cannot be
//! checked together. Only the closing equation `s'·R' = m·G + r·X` is linear and could be
//! batched. But it is one scalar multiplication of the four, and secp256k1-zkp exposes no
//! multi-scalar multiplication to batch it with.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, Script, Transaction};
use ddk_dlc::secp256k1_zkp::EcdsaAdaptorSignature;
use ddk_dlc::OracleInfo;
use ddk_messages::oracle_msgs::{tagged_attestation_msg, EventDescriptor, OracleAnnouncement};
use secp256k1::{Message, PublicKey, Secp256k1, SecretKey, Signing, Verification, XOnlyPublicKey};

/// Items a worker takes at a time. An adaptor signature takes 50–200 µs, so a chunk is a few
/// milliseconds of work: the claim costs nothing against it, and the last chunk to finish
/// leaves the other cores idle for at most that long.
const CHUNK: usize = 64;

/// Why a batch of CET adaptor signatures was not made or did not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CetError {
    /// A CET whose sighash cannot be computed (it has no input 0).
    #[error("cet {cet_index}: {source}")]
    Sighash {
        /// The CET's index.
        cet_index: usize,
        /// Why.
        #[source]
        source: bitcoin::transaction::InputsIndexError,
    },
    /// An adaptor point or path names a CET the batch does not have.
    #[error("adaptor signature {index} is for cet {cet_index}, but there are {cets} cets")]
    CetIndexOutOfRange {
        /// The adaptor signature's index.
        index: usize,
        /// The CET index it names.
        cet_index: usize,
        /// How many CETs there are.
        cets: usize,
    },
    /// A different number of signatures than adaptor points.
    #[error("{signatures} adaptor signatures for {points} adaptor points")]
    LengthMismatch {
        /// The adaptor points.
        points: usize,
        /// The signatures.
        signatures: usize,
    },
    /// The adaptor signature at `index` does not verify against its CET, adaptor point and
    /// the funding public key. It is the first bad one: every signature before it verified.
    #[error("adaptor signature {index} (cet {cet_index}) does not verify")]
    InvalidSignature {
        /// The signature's index in the batch.
        index: usize,
        /// The CET it was checked against.
        cet_index: usize,
    },
    /// No oracle.
    #[error("no oracle")]
    NoOracle,
    /// An oracle whose event is not a digit decomposition event this module supports.
    #[error("oracle {oracle}: {reason}")]
    UnsupportedEvent {
        /// The oracle's index.
        oracle: usize,
        /// What it is.
        reason: &'static str,
    },
    /// Oracles whose numeric events use different bases.
    #[error("oracle {oracle} uses base {found}, the first oracle base {expected}")]
    MixedBases {
        /// The oracle's index.
        oracle: usize,
        /// The first oracle's base.
        expected: usize,
        /// This oracle's base.
        found: usize,
    },
    /// A base below 2 (or too large to have outcomes listed).
    #[error("base {base} is not supported")]
    InvalidBase {
        /// The base.
        base: usize,
    },
    /// A digit path that names no oracle.
    #[error("path {index} names no oracle")]
    EmptyPath {
        /// The path's index.
        index: usize,
    },
    /// A digit path that names an oracle the table does not have.
    #[error("path {index} names oracle {oracle}, but there are {oracles}")]
    OracleIndexOutOfRange {
        /// The path's index.
        index: usize,
        /// The oracle named.
        oracle: usize,
        /// How many oracles there are.
        oracles: usize,
    },
    /// A digit path longer than its oracle's nonces, or empty, or with a digit not in the base.
    #[error("path {index}: oracle {oracle}'s digits are not a prefix of its event: {reason}")]
    InvalidDigits {
        /// The path's index.
        index: usize,
        /// The oracle.
        oracle: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The sum of outcome points is not a point: the infinity, or an overflow of the count.
    /// Outcome points from honest nonces never sum to it; a hostile announcement can make it.
    #[error("path {index}: the outcome points sum to no point ({source})")]
    PointSum {
        /// The path's index.
        index: usize,
        /// secp256k1's error.
        #[source]
        source: secp256k1::Error,
    },
    /// An oracle nonce or key that is not a point on the curve.
    #[error("oracle {oracle}: {source}")]
    OraclePoint {
        /// The oracle's index.
        oracle: usize,
        /// ddk-dlc's error.
        #[source]
        source: ddk_dlc::Error,
    },
}

/// What one CET adaptor signature is over: the CET it signs and the point it is encrypted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CetAdaptorPoint {
    /// The CET's index in the contract's CETs.
    pub cet_index: usize,
    /// The adaptor (encryption) point: the sum of the outcome points of the attestations that
    /// close the contract with this CET.
    pub adaptor_point: PublicKey,
}

/// What one CET adaptor signature is over, as the oracle outcome that unlocks it: for each
/// attesting oracle, the digit prefix it must sign (ddk-trie's `(oracle index, digits)` paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigitPath {
    /// The CET's index in the contract's CETs.
    pub cet_index: usize,
    /// `(oracle index, digit prefix)` for each oracle of the path, as ddk-trie lists them.
    pub oracles: Vec<(usize, Vec<usize>)>,
}

/// The CETs of one contract, each with its sighash for the funding output computed once, and
/// the threads that sign and verify their adaptor signatures.
#[derive(Debug, Clone)]
pub struct CetBatch {
    sighashes: Vec<Message>,
    threads: NonZeroUsize,
}

fn available_threads() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

impl CetBatch {
    /// The sighashes of `cets`, each spending the funding output (`fund_output_value`, locked
    /// by the 2-of-2 `funding_script_pubkey` as its P2WSH witness script) at input 0 with
    /// `SIGHASH_ALL`, as ddk-dlc computes them; on every available core.
    pub fn new(
        cets: &[Transaction],
        funding_script_pubkey: &Script,
        fund_output_value: Amount,
    ) -> Result<Self, CetError> {
        Self::with_threads(cets, funding_script_pubkey, fund_output_value, available_threads())
    }

    /// [`new`](Self::new) on `threads` threads (1: all on the calling thread).
    pub fn with_threads(
        cets: &[Transaction],
        funding_script_pubkey: &Script,
        fund_output_value: Amount,
        threads: NonZeroUsize,
    ) -> Result<Self, CetError> {
        let sighashes = par_map(cets, threads, |cet_index, cet| {
            let sighash = SighashCache::new(cet)
                .p2wsh_signature_hash(0, funding_script_pubkey, fund_output_value, EcdsaSighashType::All)
                .map_err(|source| (cet_index, CetError::Sighash { cet_index, source }))?;
            Ok(Message::from(sighash))
        })?;
        Ok(Self { sighashes, threads })
    }

    /// How many CETs.
    pub fn len(&self) -> usize {
        self.sighashes.len()
    }

    /// Whether there is no CET.
    pub fn is_empty(&self) -> bool {
        self.sighashes.is_empty()
    }

    /// The sighash of CET `cet_index`.
    pub fn sighash(&self, cet_index: usize) -> Option<&Message> {
        self.sighashes.get(cet_index)
    }

    /// The threads this batch works on.
    pub fn threads(&self) -> NonZeroUsize {
        self.threads
    }

    fn sighash_for(&self, index: usize, cet_index: usize) -> Result<&Message, (usize, CetError)> {
        self.sighashes.get(cet_index).ok_or((
            index,
            CetError::CetIndexOutOfRange {
                index,
                cet_index,
                cets: self.sighashes.len(),
            },
        ))
    }

    /// One adaptor signature per entry of `points`, in that order: the CET's sighash signed
    /// with `funding_sk` and encrypted to the adaptor point, deterministically (no auxiliary
    /// randomness). Byte for byte what `EcdsaAdaptorSignature::encrypt_no_aux_rand` gives for
    /// each entry alone.
    pub fn sign<C: Signing>(
        &self,
        secp: &Secp256k1<C>,
        points: &[CetAdaptorPoint],
        funding_sk: &SecretKey,
    ) -> Result<Vec<EcdsaAdaptorSignature>, CetError> {
        par_map(points, self.threads, |index, p| {
            let sighash = self.sighash_for(index, p.cet_index)?;
            Ok(EcdsaAdaptorSignature::encrypt_no_aux_rand(
                secp,
                sighash,
                funding_sk,
                &p.adaptor_point,
            ))
        })
    }

    /// Checks that `sigs[i]` is an adaptor signature by `fund_pubkey` of CET
    /// `points[i].cet_index`, encrypted to `points[i].adaptor_point`, for every `i`. On failure
    /// the error names the first signature that does not verify.
    pub fn verify<C: Verification>(
        &self,
        secp: &Secp256k1<C>,
        points: &[CetAdaptorPoint],
        sigs: &[EcdsaAdaptorSignature],
        fund_pubkey: &PublicKey,
    ) -> Result<(), CetError> {
        if points.len() != sigs.len() {
            return Err(CetError::LengthMismatch {
                points: points.len(),
                signatures: sigs.len(),
            });
        }
        par_map(points, self.threads, |index, p| {
            let sighash = self.sighash_for(index, p.cet_index)?;
            // Lengths are equal (checked above), so `index` is in `sigs`.
            let sig = &sigs[index];
            sig.verify(secp, sighash, fund_pubkey, &p.adaptor_point).map_err(|_| {
                (
                    index,
                    CetError::InvalidSignature {
                        index,
                        cet_index: p.cet_index,
                    },
                )
            })
        })?;
        Ok(())
    }
}

/// Each oracle's outcome points, per digit and per digit value: the point `R + H(R, P, m)·P`
/// whose discrete log the oracle reveals when it attests digit value `m` with nonce `R` and key
/// `P`. The layout (`[oracle][digit][value]`) is ddk-manager's `precompute_points`, so the same
/// table can be handed to ddk-trie.
#[derive(Debug, Clone)]
pub struct OutcomePoints {
    base: usize,
    points: Vec<Vec<Vec<PublicKey>>>,
}

impl OutcomePoints {
    /// The table of the oracles of numeric (digit decomposition, unsigned) `announcements`.
    pub fn from_announcements<C: Verification>(
        secp: &Secp256k1<C>,
        announcements: &[OracleAnnouncement],
    ) -> Result<Self, CetError> {
        let mut base = None;
        let mut infos = Vec::with_capacity(announcements.len());
        for (oracle, a) in announcements.iter().enumerate() {
            let EventDescriptor::DigitDecompositionEvent(d) = &a.oracle_event.event_descriptor else {
                return Err(CetError::UnsupportedEvent {
                    oracle,
                    reason: "not a digit decomposition event",
                });
            };
            // ddk-manager refuses signed events too: its nonces and digits must be as many.
            if d.is_signed {
                return Err(CetError::UnsupportedEvent {
                    oracle,
                    reason: "a signed numeric event",
                });
            }
            if usize::from(d.nb_digits) != a.oracle_event.oracle_nonces.len() {
                return Err(CetError::UnsupportedEvent {
                    oracle,
                    reason: "its digits and nonces are not as many",
                });
            }
            let b = usize::from(d.base);
            match base {
                None => base = Some(b),
                Some(expected) if expected != b => {
                    return Err(CetError::MixedBases {
                        oracle,
                        expected,
                        found: b,
                    })
                }
                Some(_) => {}
            }
            infos.push(OracleInfo {
                public_key: a.oracle_public_key,
                nonces: a.oracle_event.oracle_nonces.clone(),
            });
        }
        Self::from_oracle_infos(secp, &infos, base.ok_or(CetError::NoOracle)?)
    }

    /// The table of oracles with keys and nonces `oracle_infos`, each nonce attesting one digit
    /// in `base`.
    pub fn from_oracle_infos<C: Verification>(
        secp: &Secp256k1<C>,
        oracle_infos: &[OracleInfo],
        base: usize,
    ) -> Result<Self, CetError> {
        // 2 to 2^16: a dlcspecs base is a u16, and every value's message is hashed here.
        if !(2..=usize::from(u16::MAX)).contains(&base) {
            return Err(CetError::InvalidBase { base });
        }
        if oracle_infos.is_empty() {
            return Err(CetError::NoOracle);
        }
        let messages: Vec<Message> = (0..base).map(|v| tagged_attestation_msg(&v.to_string())).collect();
        let points = oracle_infos
            .iter()
            .enumerate()
            .map(|(oracle, info)| {
                info.nonces
                    .iter()
                    .map(|nonce| outcome_points(secp, &info.public_key, nonce, &messages))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| CetError::OraclePoint { oracle, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { base, points })
    }

    /// The digit base.
    pub fn base(&self) -> usize {
        self.base
    }

    /// The table as ddk-trie takes it: `[oracle][digit][value]`.
    pub fn as_slice(&self) -> &[Vec<Vec<PublicKey>>] {
        &self.points
    }

    /// The adaptor point of one path: the sum, over its oracles, of the outcome points of the
    /// digits of the oracle's prefix. `index` only labels errors.
    fn adaptor_point(&self, index: usize, oracles: &[(usize, Vec<usize>)]) -> Result<PublicKey, CetError> {
        if oracles.is_empty() {
            return Err(CetError::EmptyPath { index });
        }
        let mut keys: Vec<&PublicKey> = Vec::with_capacity(oracles.iter().map(|(_, d)| d.len()).sum());
        for (oracle, digits) in oracles {
            let table = self.points.get(*oracle).ok_or(CetError::OracleIndexOutOfRange {
                index,
                oracle: *oracle,
                oracles: self.points.len(),
            })?;
            let bad = |reason| CetError::InvalidDigits {
                index,
                oracle: *oracle,
                reason,
            };
            if digits.is_empty() {
                return Err(bad("an empty prefix"));
            }
            if digits.len() > table.len() {
                return Err(bad("more digits than nonces"));
            }
            for (values, digit) in table.iter().zip(digits) {
                keys.push(values.get(*digit).ok_or_else(|| bad("a digit not in the base"))?);
            }
        }
        PublicKey::combine_keys(&keys).map_err(|source| CetError::PointSum { index, source })
    }

    /// The adaptor point of each of `paths`, in that order, on `threads` threads.
    pub fn adaptor_points(&self, paths: &[DigitPath], threads: NonZeroUsize) -> Result<Vec<CetAdaptorPoint>, CetError> {
        par_map(paths, threads, |index, path| {
            Ok(CetAdaptorPoint {
                cet_index: path.cet_index,
                adaptor_point: self.adaptor_point(index, &path.oracles).map_err(|e| (index, e))?,
            })
        })
    }
}

fn outcome_points<C: Verification>(
    secp: &Secp256k1<C>,
    key: &XOnlyPublicKey,
    nonce: &XOnlyPublicKey,
    messages: &[Message],
) -> Result<Vec<PublicKey>, ddk_dlc::Error> {
    messages
        .iter()
        .map(|m| ddk_dlc::secp_utils::schnorrsig_compute_sig_point(secp, key, nonce, m))
        .collect()
}

/// `f` over `items` on `threads` threads (the calling thread is one of them), the results in
/// the order of `items`. Workers claim chunks of [`CHUNK`] items in order and stop claiming
/// once one fails, and a chunk stops at its first failure; so every item before the first
/// failing one was done, and the error returned is that of the first failing item, whatever
/// the scheduling.
fn par_map<T, R, F>(items: &[T], threads: NonZeroUsize, f: F) -> Result<Vec<R>, CetError>
where
    T: Sync,
    R: Send,
    F: Fn(usize, &T) -> Result<R, (usize, CetError)> + Sync,
{
    let workers = threads.get().min(items.len().div_ceil(CHUNK));
    if workers <= 1 {
        return items
            .iter()
            .enumerate()
            .map(|(i, t)| f(i, t).map_err(|(_, e)| e))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let done: Mutex<Vec<(usize, Vec<R>)>> = Mutex::new(Vec::with_capacity(items.len().div_ceil(CHUNK)));
    let first_error: Mutex<Option<(usize, CetError)>> = Mutex::new(None);
    let work = || loop {
        if failed.load(Ordering::Relaxed) {
            return;
        }
        let chunk = next.fetch_add(1, Ordering::Relaxed);
        let start = chunk.saturating_mul(CHUNK);
        let Some(slice) = items.get(start..) else { return };
        if slice.is_empty() {
            return;
        }
        let slice = &slice[..slice.len().min(CHUNK)];
        let mut out = Vec::with_capacity(slice.len());
        for (i, item) in slice.iter().enumerate() {
            match f(start + i, item) {
                Ok(r) => out.push(r),
                Err((at, e)) => {
                    failed.store(true, Ordering::Relaxed);
                    let mut first = first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if first.as_ref().is_none_or(|(prev, _)| at < *prev) {
                        *first = Some((at, e));
                    }
                    return;
                }
            }
        }
        done.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((chunk, out));
    };
    std::thread::scope(|s| {
        for _ in 1..workers {
            s.spawn(work);
        }
        work();
    });
    if let Some((_, e)) = first_error
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return Err(e);
    }
    let mut done = done.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    done.sort_unstable_by_key(|(chunk, _)| *chunk);
    let mut results = Vec::with_capacity(items.len());
    for (_, out) in done {
        results.extend(out);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_map_keeps_order_and_reports_the_first_failure() {
        let items: Vec<usize> = (0..10_000).collect();
        let four = NonZeroUsize::new(4).expect("4 is not 0");
        let doubled = par_map(&items, four, |_, x| Ok(x * 2)).expect("no failure");
        assert_eq!(doubled, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        for bad in [0, 63, 64, 5_000, 9_999] {
            let err = par_map(&items, four, |i, x| {
                if *x >= bad && x % 7 == bad % 7 {
                    Err((i, CetError::EmptyPath { index: i }))
                } else {
                    Ok(*x)
                }
            })
            .expect_err("fails");
            assert!(
                matches!(err, CetError::EmptyPath { index } if index == bad),
                "{err:?} for {bad}"
            );
        }
        assert!(par_map(&[] as &[usize], four, |_, x| Ok(*x)).expect("empty").is_empty());
    }
}
