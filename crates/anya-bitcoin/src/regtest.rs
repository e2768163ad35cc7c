//! Real regtest blocks, mined in-process.
//!
//! [`RegtestChain`] builds a regtest chain on top of the regtest genesis block: each block has
//! a BIP34 coinbase paying the subsidy and the fees to a script you choose, a correct merkle
//! root and witness commitment, and a header whose proof of work meets the regtest target.
//! Transactions are admitted only if they are valid against the chain's own UTXO set: every
//! input unspent and mature (100 blocks for coinbase outputs), no value created, absolute and
//! relative timelocks satisfied as a block at that height allows, and every script verified by
//! Bitcoin Core's interpreter ([`crate::verify`]). So coins a wallet receives from it are real
//! regtest coins, and spends it accepts are spends Core would accept into a block.
//!
//! It is the chain source for tests and the quickstart where no bitcoind runs; the blocks it
//! makes are ordinary [`Block`]s that any regtest node would accept.

use std::collections::{HashMap, HashSet};

use bitcoin::block::{Header, Version as BlockVersion};
use bitcoin::blockdata::constants::genesis_block;
use bitcoin::hashes::Hash;
use bitcoin::opcodes::OP_0;
use bitcoin::pow::CompactTarget;
use bitcoin::script::Builder;
use bitcoin::{
    absolute, transaction, Amount, Block, BlockHash, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxMerkleNode,
    TxOut, Txid, Witness,
};

use crate::verify::{check_transaction, check_tx_inputs, verify_transaction, CheckError, VerifyError, VerifyFlags};

/// Blocks a coinbase output must wait before it is spent.
pub const COINBASE_MATURITY: u32 = 100;
/// Regtest halves the subsidy every 150 blocks.
pub const HALVING_INTERVAL: u32 = 150;
/// The regtest proof-of-work limit, in compact form.
pub const REGTEST_BITS: u32 = 0x207f_ffff;

/// Why a transaction cannot go into the next block.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegtestError {
    /// An input spends an output the chain does not have unspent.
    #[error("transaction {txid} input {index} spends {outpoint}, which is missing or spent")]
    MissingInput {
        /// The transaction.
        txid: Txid,
        /// The input.
        index: usize,
        /// What it spends.
        outpoint: OutPoint,
    },
    /// An input spends a coinbase output younger than [`COINBASE_MATURITY`] blocks.
    #[error("transaction {txid} input {index} spends an immature coinbase output")]
    ImmatureCoinbase {
        /// The transaction.
        txid: Txid,
        /// The input.
        index: usize,
    },
    /// The outputs are worth more than the inputs.
    #[error("transaction {txid} creates value: outputs {outputs} exceed inputs {inputs}")]
    ValueCreated {
        /// The transaction.
        txid: Txid,
        /// Sum of inputs.
        inputs: Amount,
        /// Sum of outputs.
        outputs: Amount,
    },
    /// An absolute or relative timelock is not yet satisfied.
    #[error("transaction {txid} is not final at height {height}")]
    NotFinal {
        /// The transaction.
        txid: Txid,
        /// The height of the block it was meant for.
        height: u32,
    },
    /// A coinbase transaction was passed as an ordinary transaction.
    #[error("transaction {txid} is a coinbase")]
    Coinbase {
        /// The transaction.
        txid: Txid,
    },
    /// The transaction breaks one of Core's context-free rules ([`check_transaction`]): no
    /// inputs or outputs, an output value out of range, an input spending the same output
    /// twice, a bad coinbase scriptSig length, a null prevout.
    #[error("transaction {txid}: {source}")]
    Check {
        /// The transaction.
        txid: Txid,
        /// The rule it breaks.
        source: CheckError,
    },
    /// An input spends an output that an earlier transaction of the same block already spent.
    #[error("transaction {txid} input {index} spends {outpoint}, already spent in this block")]
    DoubleSpend {
        /// The transaction.
        txid: Txid,
        /// The input.
        index: usize,
        /// What it spends.
        outpoint: OutPoint,
    },
    /// A sum of input values, or the block's fees plus its subsidy, passed the money limit.
    #[error("transaction {txid}: a sum of values passes the money limit")]
    ValueOutOfRange {
        /// The transaction (for the block's fees plus subsidy, the block's last transaction).
        txid: Txid,
    },
    /// A script failed Bitcoin Core's verification.
    #[error("transaction {txid}: {source}")]
    Script {
        /// The transaction.
        txid: Txid,
        /// What Core said.
        source: VerifyError,
    },
}

#[derive(Debug, Clone)]
struct Coin {
    output: TxOut,
    height: u32,
    coinbase: bool,
}

/// What the block being built has done to the UTXO set so far, on top of the chain's.
#[derive(Debug, Default)]
struct Pending {
    /// Every output spent in this block, from the chain's set or created in the block: a
    /// second spend of any of them is a double spend.
    spent: HashSet<OutPoint>,
    created: HashMap<OutPoint, Coin>,
}

impl Pending {
    fn coin<'a>(&'a self, base: &'a HashMap<OutPoint, Coin>, outpoint: &OutPoint) -> Option<&'a Coin> {
        if self.spent.contains(outpoint) {
            return None;
        }
        self.created.get(outpoint).or_else(|| base.get(outpoint))
    }

    fn spend(&mut self, outpoint: OutPoint) {
        self.created.remove(&outpoint);
        self.spent.insert(outpoint);
    }
}

/// A regtest chain held in memory: blocks from genesis and the UTXO set at the tip.
#[derive(Debug, Clone)]
pub struct RegtestChain {
    blocks: Vec<Block>,
    utxos: HashMap<OutPoint, Coin>,
}

impl Default for RegtestChain {
    fn default() -> Self {
        Self::new()
    }
}

impl RegtestChain {
    /// A chain holding only the regtest genesis block.
    pub fn new() -> Self {
        Self {
            blocks: vec![genesis_block(Network::Regtest)],
            utxos: HashMap::new(),
        }
    }

    /// The height of the tip (0 for genesis).
    pub fn height(&self) -> u32 {
        (self.blocks.len() - 1) as u32
    }

    /// The tip block.
    pub fn tip(&self) -> &Block {
        self.blocks.last().expect("the chain always holds genesis")
    }

    /// The block at `height`, if the chain is that long.
    pub fn block(&self, height: u32) -> Option<&Block> {
        self.blocks.get(height as usize)
    }

    /// The unspent output at `outpoint`.
    pub fn utxo(&self, outpoint: &OutPoint) -> Option<&TxOut> {
        self.utxos.get(outpoint).map(|c| &c.output)
    }

    /// The block subsidy at `height`.
    pub fn subsidy(height: u32) -> Amount {
        let halvings = height / HALVING_INTERVAL;
        if halvings >= 64 {
            Amount::ZERO
        } else {
            Amount::from_sat((50 * 100_000_000) >> halvings)
        }
    }

    /// The outputs `tx` spends, from the UTXO set, checked as the next block would check them
    /// (Core's context-free rules first, [`check_transaction`]).
    pub fn spent_outputs(&self, tx: &Transaction) -> Result<Vec<TxOut>, RegtestError> {
        self.spent_from(&Pending::default(), tx)
    }

    fn spent_from(&self, pending: &Pending, tx: &Transaction) -> Result<Vec<TxOut>, RegtestError> {
        let txid = tx.compute_txid();
        // Core's order: the rules a transaction breaks by itself (duplicate inputs, no outputs,
        // values out of range) before anything is looked up.
        check_transaction(tx).map_err(|source| RegtestError::Check { txid, source })?;
        if tx.is_coinbase() {
            return Err(RegtestError::Coinbase { txid });
        }
        let next = self.height() + 1;
        let mut out = Vec::with_capacity(tx.input.len());
        for (index, input) in tx.input.iter().enumerate() {
            if pending.spent.contains(&input.previous_output) {
                return Err(RegtestError::DoubleSpend {
                    txid,
                    index,
                    outpoint: input.previous_output,
                });
            }
            let coin = pending
                .coin(&self.utxos, &input.previous_output)
                .ok_or(RegtestError::MissingInput {
                    txid,
                    index,
                    outpoint: input.previous_output,
                })?;
            if coin.coinbase && next - coin.height < COINBASE_MATURITY {
                return Err(RegtestError::ImmatureCoinbase { txid, index });
            }
            if let Some(relative) = input.sequence.to_relative_lock_time() {
                if tx.version >= transaction::Version::TWO {
                    let ok = match relative {
                        bitcoin::relative::LockTime::Blocks(h) => next - coin.height >= u32::from(h.value()),
                        // Block times here are one second apart from genesis; compare in units
                        // of 512 seconds by median time past.
                        bitcoin::relative::LockTime::Time(t) => {
                            let mtp = |h: u32| self.median_time_past(h);
                            mtp(next - 1).saturating_sub(mtp(coin.height.saturating_sub(1))) >= t.value() as u32 * 512
                        }
                    };
                    if !ok {
                        return Err(RegtestError::NotFinal { txid, height: next });
                    }
                }
            }
            out.push(coin.output.clone());
        }
        let lock_time_ok = match tx.lock_time {
            absolute::LockTime::Blocks(h) => tx.lock_time == absolute::LockTime::ZERO || h.to_consensus_u32() < next,
            absolute::LockTime::Seconds(t) => t.to_consensus_u32() < self.median_time_past(next - 1),
        };
        if !lock_time_ok && tx.input.iter().any(|i| i.sequence != Sequence::MAX) {
            return Err(RegtestError::NotFinal { txid, height: next });
        }
        Ok(out)
    }

    /// Median of the last 11 block times up to `height`.
    fn median_time_past(&self, height: u32) -> u32 {
        let start = height.saturating_sub(10) as usize;
        let mut times: Vec<u32> = self.blocks[start..=height as usize]
            .iter()
            .map(|b| b.header.time)
            .collect();
        times.sort_unstable();
        times[times.len() / 2]
    }

    /// Mines a block paying subsidy and fees to `coinbase_to` and holding `txs` (in order; a
    /// transaction may spend an earlier one of the same block). Each transaction, and the
    /// coinbase, is checked by Core's context-free rules ([`check_transaction`]); each
    /// transaction against the UTXO set (no output spent twice, in the block or before it; value
    /// in at least value out, summed with checked arithmetic) and by Core's script interpreter.
    /// On any error nothing changes.
    pub fn mine(&mut self, coinbase_to: &ScriptBuf, txs: Vec<Transaction>) -> Result<&Block, RegtestError> {
        let height = self.height() + 1;
        let (mut pending, fees) = self.connect(&txs)?;
        let reward = Self::subsidy(height)
            .checked_add(fees)
            .filter(|r| *r <= Amount::MAX_MONEY);
        let Some(reward) = reward else {
            let txid = txs.last().map_or_else(Txid::all_zeros, Transaction::compute_txid);
            return Err(RegtestError::ValueOutOfRange { txid });
        };
        let coinbase = self.coinbase(height, coinbase_to, reward, &txs);
        // The coinbase is ours, but a block with a malformed one (e.g. a `coinbase_to` too big
        // for a block) is not one to hand out.
        check_transaction(&coinbase).map_err(|source| RegtestError::Check {
            txid: coinbase.compute_txid(),
            source,
        })?;
        add_outputs(&mut pending.created, &coinbase, height, true);
        let mut txdata = Vec::with_capacity(txs.len() + 1);
        txdata.push(coinbase);
        txdata.extend(txs);
        let block = self.seal(txdata);
        self.blocks.push(block);
        for outpoint in &pending.spent {
            self.utxos.remove(outpoint);
        }
        self.utxos.extend(pending.created);
        Ok(self.tip())
    }

    /// Whether the next block could hold `txs` (in order; one may spend an earlier one): the
    /// checks [`mine`](Self::mine) makes, without mining. Returns their fees. A mempool uses it
    /// to admit a transaction on top of the ones it holds.
    pub fn accepts(&self, txs: &[Transaction]) -> Result<Amount, RegtestError> {
        self.connect(txs).map(|(_, fees)| fees)
    }

    /// Checks `txs` as the next block's transactions: what they do to the UTXO set, and their
    /// fees.
    fn connect(&self, txs: &[Transaction]) -> Result<(Pending, Amount), RegtestError> {
        let height = self.height() + 1;
        let mut pending = Pending::default();
        let mut fees = Amount::ZERO;
        for tx in txs {
            let txid = tx.compute_txid();
            // Checked against the UTXO set after the block's earlier transactions.
            let spent = self.spent_from(&pending, tx)?;
            verify_transaction(tx, &spent, VerifyFlags::consensus())
                .map_err(|source| RegtestError::Script { txid, source })?;
            // Core's CheckTxInputs, with checked sums: inputs come from the UTXO set, but a sum
            // is checked wherever it is taken rather than trusted to be small.
            let fee = check_tx_inputs(tx, &spent).map_err(|e| match e {
                CheckError::InputsBelowOutputs { inputs, outputs } => {
                    RegtestError::ValueCreated { txid, inputs, outputs }
                }
                CheckError::InputValuesOutOfRange { .. } | CheckError::OutputTotalTooLarge { .. } => {
                    RegtestError::ValueOutOfRange { txid }
                }
                source => RegtestError::Check { txid, source },
            })?;
            fees = fees.checked_add(fee).ok_or(RegtestError::ValueOutOfRange { txid })?;
            for input in &tx.input {
                pending.spend(input.previous_output);
            }
            add_outputs(&mut pending.created, tx, height, false);
        }
        Ok((pending, fees))
    }

    /// Mines `n` blocks with no transactions, paying `coinbase_to`.
    ///
    /// # Panics
    /// If `coinbase_to` is so large that the coinbase breaks [`check_transaction`] (over a
    /// block's size); use [`mine`](Self::mine) to get that as an error.
    pub fn mine_empty(&mut self, n: u32, coinbase_to: &ScriptBuf) {
        for _ in 0..n {
            self.mine(coinbase_to, Vec::new())
                .expect("a block without transactions is valid when its coinbase fits in a block");
        }
    }

    fn coinbase(&self, height: u32, to: &ScriptBuf, value: Amount, txs: &[Transaction]) -> Transaction {
        let script_sig = Builder::new()
            .push_int(i64::from(height))
            .push_opcode(OP_0)
            .into_script();
        let mut witness = Witness::new();
        witness.push([0u8; 32]);
        let mut coinbase = Transaction {
            version: transaction::Version::TWO,
            lock_time: absolute::LockTime::ZERO,
            input: vec![bitcoin::TxIn {
                previous_output: OutPoint::null(),
                script_sig,
                sequence: Sequence::MAX,
                witness,
            }],
            output: vec![TxOut {
                value,
                script_pubkey: to.clone(),
            }],
        };
        // The witness commitment (BIP141) over the block's transactions.
        let mut draft = Block {
            header: self.tip().header,
            txdata: std::iter::once(coinbase.clone()).chain(txs.iter().cloned()).collect(),
        };
        draft.txdata[0].output.clear();
        let root = draft.witness_root().expect("the block has a coinbase");
        let commitment = Block::compute_witness_commitment(&root, &[0u8; 32]);
        let mut script = vec![0x6a, 0x24, 0xaa, 0x21, 0xa9, 0xed];
        script.extend_from_slice(commitment.as_byte_array());
        coinbase.output.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::from_bytes(script),
        });
        coinbase
    }

    fn seal(&self, txdata: Vec<Transaction>) -> Block {
        let prev = self.tip().header;
        let mut block = Block {
            header: Header {
                version: BlockVersion::from_consensus(0x2000_0000),
                prev_blockhash: prev.block_hash(),
                merkle_root: TxMerkleNode::all_zeros(),
                time: prev.time + 1,
                bits: CompactTarget::from_consensus(REGTEST_BITS),
                nonce: 0,
            },
            txdata,
        };
        block.header.merkle_root = block.compute_merkle_root().expect("the block has a coinbase");
        let target = block.header.target();
        while block.header.validate_pow(target).is_err() {
            block.header.nonce += 1;
        }
        block
    }

    /// The hash of the block at `height`.
    pub fn hash(&self, height: u32) -> Option<BlockHash> {
        self.block(height).map(|b| b.block_hash())
    }
}

fn add_outputs(utxos: &mut HashMap<OutPoint, Coin>, tx: &Transaction, height: u32, coinbase: bool) {
    let txid = tx.compute_txid();
    for (vout, output) in tx.output.iter().enumerate() {
        if output.script_pubkey.is_op_return() {
            continue;
        }
        utxos.insert(
            OutPoint::new(txid, vout as u32),
            Coin {
                output: output.clone(),
                height,
                coinbase,
            },
        );
    }
}
