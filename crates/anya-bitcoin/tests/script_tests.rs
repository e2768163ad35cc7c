//! Bitcoin Core's `script_tests.json`, case by case, through anya's verifier.
//!
//! Mirrors `script_json_test` in Core's `src/test/script_tests.cpp`: the assembly is read with
//! Core's `ParseScript` rules, the crediting and spending transactions are built like
//! `BuildCreditingTransaction`/`BuildSpendingTransaction`, and the result (OK or an error) must
//! match.
//!
//! # Flag mapping
//! libbitcoinkernel's script API accepts only the consensus flags (`P2SH`, `DERSIG`, `NULLDUMMY`,
//! `CHECKLOCKTIMEVERIFY`, `CHECKSEQUENCEVERIFY`, `WITNESS`, `TAPROOT`); anything else is refused
//! with `InvalidFlags`. Each case runs under the consensus subset of its flags (with
//! `CLEANSTACK` implying `P2SH,WITNESS`, as Core's `DoTest` does). Core's own test asserts that
//! removing flags from a passing case, or adding flags to a failing one, keeps the result, so:
//! - an `OK` case must pass under the subset (a full check);
//! - an error case whose flags are all consensus must fail (a full check);
//! - an error case that also names policy flags must fail under the subset, unless its expected
//!   error is one only those dropped policy flags produce (e.g. `SIG_HIGH_S` under `LOW_S`): such
//!   a case cannot be expressed through the kernel. It is counted, and the expected error is
//!   checked to belong to a dropped flag; if the kernel accepts any other error case, the test
//!   fails.
//!
//! The kernel reports pass/fail, not Core's `ScriptError`, so an error case checks that the input
//! is rejected, not which error Core would name.

use std::collections::BTreeMap;

use anya_bitcoin::verify::{verify_input, ScriptFailure, VerifyError, VerifyFlags};
use bitcoin::secp256k1::{PublicKey, Secp256k1, SecretKey, XOnlyPublicKey};
use bitcoin::taproot::{LeafVersion, TaprootBuilder};
use bitcoin::{absolute, transaction, Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness};
use serde_json::Value;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/vectors/bitcoin-core/script_tests.json"
);

/// Test arrays in the file (one-element comment rows excluded).
const EXPECTED_CASES: usize = 1222;

/// Core's opcode names accepted by `ParseOpCode` (`OP_RESERVED` and `OP_NOP`..`OP_CHECKSIGADD`),
/// in opcode order from 0x61.
const OPCODES_FROM_NOP: [&str; 90] = [
    "NOP",
    "VER",
    "IF",
    "NOTIF",
    "VERIF",
    "VERNOTIF",
    "ELSE",
    "ENDIF",
    "VERIFY",
    "RETURN",
    "TOALTSTACK",
    "FROMALTSTACK",
    "2DROP",
    "2DUP",
    "3DUP",
    "2OVER",
    "2ROT",
    "2SWAP",
    "IFDUP",
    "DEPTH",
    "DROP",
    "DUP",
    "NIP",
    "OVER",
    "PICK",
    "ROLL",
    "ROT",
    "SWAP",
    "TUCK",
    "CAT",
    "SUBSTR",
    "LEFT",
    "RIGHT",
    "SIZE",
    "INVERT",
    "AND",
    "OR",
    "XOR",
    "EQUAL",
    "EQUALVERIFY",
    "RESERVED1",
    "RESERVED2",
    "1ADD",
    "1SUB",
    "2MUL",
    "2DIV",
    "NEGATE",
    "ABS",
    "NOT",
    "0NOTEQUAL",
    "ADD",
    "SUB",
    "MUL",
    "DIV",
    "MOD",
    "LSHIFT",
    "RSHIFT",
    "BOOLAND",
    "BOOLOR",
    "NUMEQUAL",
    "NUMEQUALVERIFY",
    "NUMNOTEQUAL",
    "LESSTHAN",
    "GREATERTHAN",
    "LESSTHANOREQUAL",
    "GREATERTHANOREQUAL",
    "MIN",
    "MAX",
    "WITHIN",
    "RIPEMD160",
    "SHA1",
    "SHA256",
    "HASH160",
    "HASH256",
    "CODESEPARATOR",
    "CHECKSIG",
    "CHECKSIGVERIFY",
    "CHECKMULTISIG",
    "CHECKMULTISIGVERIFY",
    "NOP1",
    "CHECKLOCKTIMEVERIFY",
    "CHECKSEQUENCEVERIFY",
    "NOP4",
    "NOP5",
    "NOP6",
    "NOP7",
    "NOP8",
    "NOP9",
    "NOP10",
    "CHECKSIGADD",
];

fn opcode(word: &str) -> u8 {
    let name = word.strip_prefix("OP_").unwrap_or(word);
    if name == "RESERVED" {
        return 0x50;
    }
    let pos = OPCODES_FROM_NOP
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("script parse error: unknown opcode {word:?}"));
    0x61 + u8::try_from(pos).expect("fewer than 90 opcodes")
}

/// `CScript << std::vector<unsigned char>`: a push with the smallest length prefix.
fn push_data(out: &mut Vec<u8>, data: &[u8]) {
    let len = data.len();
    if len < 0x4c {
        out.push(u8::try_from(len).expect("checked < 0x4c"));
    } else if let Ok(l) = u8::try_from(len) {
        out.extend([0x4c, l]);
    } else if let Ok(l) = u16::try_from(len) {
        out.push(0x4d);
        out.extend(l.to_le_bytes());
    } else {
        out.push(0x4e);
        out.extend(u32::try_from(len).expect("script data under 4 GiB").to_le_bytes());
    }
    out.extend_from_slice(data);
}

/// `CScriptNum::serialize`.
fn script_num(n: i64) -> Vec<u8> {
    if n == 0 {
        return Vec::new();
    }
    let neg = n < 0;
    let mut abs = n.unsigned_abs();
    let mut out = Vec::new();
    while abs > 0 {
        out.push((abs & 0xff) as u8);
        abs >>= 8;
    }
    let last = out.len() - 1;
    if out[last] & 0x80 != 0 {
        out.push(if neg { 0x80 } else { 0 });
    } else if neg {
        out[last] |= 0x80;
    }
    out
}

/// Core's `ParseScript` (src/core_io.cpp).
fn parse_script(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for w in s.split([' ', '\t', '\n']).filter(|w| !w.is_empty()) {
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if digits(w) || (w.len() > 1 && w.starts_with('-') && digits(&w[1..])) {
            let n: i64 = w.parse().expect("decimal literal");
            assert!(n.unsigned_abs() <= 0xffff_ffff, "decimal out of range: {w}");
            // CScript::push_int64
            if n == -1 || (1..=16).contains(&n) {
                out.push(u8::try_from(n + 0x50).expect("OP_1NEGATE..OP_16"));
            } else if n == 0 {
                out.push(0x00);
            } else {
                push_data(&mut out, &script_num(n));
            }
        } else if let Some(hex) = w.strip_prefix("0x").filter(|h| !h.is_empty() && is_hex(h)) {
            out.extend(decode_hex(hex));
        } else if w.len() >= 2 && w.starts_with('\'') && w.ends_with('\'') {
            push_data(&mut out, &w.as_bytes()[1..w.len() - 1]);
        } else {
            out.push(opcode(w));
        }
    }
    out
}

fn is_hex(s: &str) -> bool {
    s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn decode_hex(s: &str) -> Vec<u8> {
    assert!(is_hex(s), "not hex: {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit pair"))
        .collect()
}

/// Core's flag names, split into what the kernel can take and what it cannot.
fn parse_flags(s: &str) -> (VerifyFlags, Vec<String>) {
    let mut flags = VerifyFlags::NONE;
    let mut policy = Vec::new();
    for name in s.split(',').filter(|n| !n.is_empty()) {
        match name {
            "NONE" => {}
            "P2SH" => flags |= VerifyFlags::P2SH,
            "DERSIG" => flags |= VerifyFlags::DERSIG,
            "NULLDUMMY" => flags |= VerifyFlags::NULLDUMMY,
            "CHECKLOCKTIMEVERIFY" => flags |= VerifyFlags::CHECKLOCKTIMEVERIFY,
            "CHECKSEQUENCEVERIFY" => flags |= VerifyFlags::CHECKSEQUENCEVERIFY,
            "WITNESS" => flags |= VerifyFlags::WITNESS,
            "TAPROOT" => flags |= VerifyFlags::TAPROOT,
            "CLEANSTACK" => {
                // DoTest: CLEANSTACK implies P2SH and WITNESS.
                flags |= VerifyFlags::P2SH | VerifyFlags::WITNESS;
                policy.push(name.to_owned());
            }
            "STRICTENC"
            | "LOW_S"
            | "SIGPUSHONLY"
            | "MINIMALDATA"
            | "DISCOURAGE_UPGRADABLE_NOPS"
            | "MINIMALIF"
            | "NULLFAIL"
            | "WITNESS_PUBKEYTYPE"
            | "CONST_SCRIPTCODE"
            | "DISCOURAGE_UPGRADABLE_WITNESS_PROGRAM"
            | "DISCOURAGE_UPGRADABLE_PUBKEYTYPE"
            | "DISCOURAGE_OP_SUCCESS"
            | "DISCOURAGE_UPGRADABLE_TAPROOT_VERSION" => {
                policy.push(name.to_owned());
            }
            other => panic!("unknown flag {other:?}"),
        }
    }
    (flags, policy)
}

/// The errors that only a given policy flag produces (Core's interpreter.cpp).
fn policy_errors(flag: &str) -> &'static [&'static str] {
    match flag {
        "STRICTENC" => &["SIG_HASHTYPE", "SIG_DER", "PUBKEYTYPE"],
        "LOW_S" => &["SIG_HIGH_S", "SIG_DER"],
        "SIGPUSHONLY" => &["SIG_PUSHONLY"],
        "MINIMALDATA" => &["MINIMALDATA", "SCRIPTNUM", "UNKNOWN_ERROR"],
        "DISCOURAGE_UPGRADABLE_NOPS" => &["DISCOURAGE_UPGRADABLE_NOPS"],
        "CLEANSTACK" => &["CLEANSTACK"],
        "MINIMALIF" => &["MINIMALIF"],
        "NULLFAIL" => &["NULLFAIL"],
        "WITNESS_PUBKEYTYPE" => &["WITNESS_PUBKEYTYPE"],
        "DISCOURAGE_UPGRADABLE_WITNESS_PROGRAM" => &["DISCOURAGE_UPGRADABLE_WITNESS_PROGRAM"],
        _ => &[],
    }
}

struct Case {
    witness: Witness,
    amount: Amount,
    script_sig: ScriptBuf,
    script_pubkey: ScriptBuf,
    flags: VerifyFlags,
    policy: Vec<String>,
    expected: String,
}

fn amount_from_btc(v: &Value) -> Amount {
    let btc = v.as_f64().expect("amount is a JSON number");
    Amount::from_sat((btc * 1e8).round() as u64)
}

fn parse_case(test: &[Value]) -> Option<Case> {
    let secp = Secp256k1::new();
    let mut pos = 0;
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut amount = Amount::ZERO;
    let mut taproot_output = None;
    if let Some(Value::Array(wit)) = test.first() {
        let (value, elements) = wit.split_last().expect("witness array ends with the amount");
        for element in elements {
            let element = element.as_str().expect("witness element is a string");
            if let Some(script) = element.strip_prefix("#SCRIPT#") {
                stack.push(parse_script(script));
            } else if element == "#CONTROLBLOCK#" {
                // Single leaf at depth 0 under key0's x-only key (secret 1), as Core's test does.
                let leaf = ScriptBuf::from_bytes(stack.last().expect("leaf script first").clone());
                let mut key0 = [0u8; 32];
                key0[31] = 1;
                let sk = SecretKey::from_slice(&key0).expect("1 is a valid secret key");
                let internal = XOnlyPublicKey::from(PublicKey::from_secret_key(&secp, &sk));
                let info = TaprootBuilder::new()
                    .add_leaf(0, leaf.clone())
                    .expect("one leaf at depth 0")
                    .finalize(&secp, internal)
                    .expect("complete tree");
                let cb = info
                    .control_block(&(leaf, LeafVersion::TapScript))
                    .expect("leaf is in the tree");
                stack.push(cb.serialize());
                taproot_output = Some(info.output_key());
            } else {
                stack.push(decode_hex(element));
            }
        }
        amount = amount_from_btc(value);
        pos = 1;
    }
    if test.len() < 4 + pos {
        assert_eq!(test.len(), 1, "bad test: {test:?}");
        return None;
    }
    let text = |i: usize| test[i].as_str().expect("string field");
    let script_sig = ScriptBuf::from_bytes(parse_script(text(pos)));
    let spk_text = text(pos + 1);
    let script_pubkey = if spk_text == "0x51 0x20 #TAPROOTOUTPUT#" {
        let key = taproot_output.expect("#CONTROLBLOCK# before #TAPROOTOUTPUT#");
        let mut spk = vec![0x51, 0x20];
        spk.extend(key.to_x_only_public_key().serialize());
        ScriptBuf::from_bytes(spk)
    } else {
        ScriptBuf::from_bytes(parse_script(spk_text))
    };
    let (flags, policy) = parse_flags(text(pos + 2));
    Some(Case {
        witness: Witness::from_slice(&stack),
        amount,
        script_sig,
        script_pubkey,
        flags,
        policy,
        expected: text(pos + 3).to_owned(),
    })
}

/// `BuildCreditingTransaction` + `BuildSpendingTransaction`.
fn transactions(case: &Case) -> (Transaction, TxOut) {
    let credit_out = TxOut {
        value: case.amount,
        script_pubkey: case.script_pubkey.clone(),
    };
    let credit = Transaction {
        version: transaction::Version::ONE,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::null(),
            script_sig: ScriptBuf::from_bytes(vec![0x00, 0x00]),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![credit_out.clone()],
    };
    let spend = Transaction {
        version: transaction::Version::ONE,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint {
                txid: credit.compute_txid(),
                vout: 0,
            },
            script_sig: case.script_sig.clone(),
            sequence: Sequence::MAX,
            witness: case.witness.clone(),
        }],
        output: vec![TxOut {
            value: case.amount,
            script_pubkey: ScriptBuf::new(),
        }],
    };
    (spend, credit_out)
}

#[derive(Default, Debug)]
struct Tally {
    total: usize,
    ok_checked: usize,
    error_checked_exact_flags: usize,
    error_checked_consensus_subset: usize,
    policy_only: BTreeMap<String, usize>,
    failures: Vec<String>,
}

fn run_all() -> Tally {
    let text = std::fs::read_to_string(VECTORS).expect("script_tests.json is readable");
    let tests: Vec<Vec<Value>> = serde_json::from_str(&text).expect("script_tests.json parses");
    let mut tally = Tally::default();
    for test in &tests {
        let Some(case) = parse_case(test) else { continue };
        tally.total += 1;
        let (spend, credit_out) = transactions(&case);
        let result = verify_input(&spend, 0, &[credit_out], case.flags);
        let describe = || format!("{} => {result:?}", Value::Array(test.clone()));
        match (case.expected.as_str(), &result) {
            ("OK", Ok(())) => tally.ok_checked += 1,
            ("OK", Err(_)) => tally.failures.push(describe()),
            (
                _,
                Err(VerifyError::Script {
                    index: 0,
                    reason: ScriptFailure::Invalid,
                }),
            ) => {
                if case.policy.is_empty() {
                    tally.error_checked_exact_flags += 1;
                } else {
                    tally.error_checked_consensus_subset += 1;
                }
            }
            (expected, Ok(())) if case.policy.iter().any(|flag| policy_errors(flag).contains(&expected)) => {
                *tally.policy_only.entry(expected.to_owned()).or_default() += 1;
            }
            _ => tally.failures.push(describe()),
        }
    }
    tally
}

#[test]
#[allow(clippy::print_stdout, reason = "test output: the per-category counts are the report")]
fn bitcoin_core_script_tests() {
    let tally = run_all();
    let policy_only: usize = tally.policy_only.values().sum();
    // Test output, not library output: the counts are the point of this test.
    println!(
        "script_tests.json: {} cases; OK checked {}; error checked with exact flags {}; error \
         checked under consensus subset {}; policy-only errors not expressible through the \
         kernel {} {:?}; failures {}",
        tally.total,
        tally.ok_checked,
        tally.error_checked_exact_flags,
        tally.error_checked_consensus_subset,
        policy_only,
        tally.policy_only,
        tally.failures.len()
    );
    assert!(
        tally.failures.is_empty(),
        "{} failing cases:\n{}",
        tally.failures.len(),
        tally.failures.join("\n")
    );
    assert_eq!(tally.total, EXPECTED_CASES);
    // Pinned so that a change in the kernel or in this harness shows up as a changed count:
    // 675 OK cases, 86 error cases under their exact (all-consensus) flags, 344 error cases
    // rejected under the consensus subset of their flags, and 117 whose expected error only a
    // policy flag produces (not expressible through libbitcoinkernel's flag set).
    assert_eq!(tally.ok_checked, 675);
    assert_eq!(tally.error_checked_exact_flags, 86);
    assert_eq!(tally.error_checked_consensus_subset, 344);
    assert_eq!(policy_only, 117);
    assert_eq!(
        tally.ok_checked + tally.error_checked_exact_flags + tally.error_checked_consensus_subset + policy_only,
        EXPECTED_CASES
    );
}

#[test]
fn parse_script_follows_core() {
    assert_eq!(parse_script("0"), [0x00]);
    assert_eq!(parse_script("-1 16 17"), [0x4f, 0x60, 0x01, 0x11]);
    assert_eq!(parse_script("-128"), [0x02, 0x80, 0x80]);
    assert_eq!(
        parse_script("0x4c 0x01 0x07 'ab' OP_ADD ADD"),
        [0x4c, 0x01, 0x07, 0x02, b'a', b'b', 0x93, 0x93]
    );
    assert_eq!(parse_script("''"), [0x00]);
    assert_eq!(parse_script("RESERVED NOP10 CHECKSIGADD"), [0x50, 0xb9, 0xba]);
}
