//! The digit paths of ddk-trie's adaptor trie, in adaptor-signature order.
//!
//! ddk-trie iterates its trie only through `TrieIterInfo`, whose fields are private, so the
//! paths are read from the trie's public dump instead. This follows the traversal of
//! `MultiTrieIterator`: each root is the first oracle's digit trie. A node's data points to the
//! next oracle's trie. A digit path is the concatenation of the prefixes from a digit trie's
//! root down to the node that holds the data. The walk is checked end to end:
//! `tests/trie_paths.rs` signs along these paths with anya and has ddk-manager's
//! `verify_adaptor_info` accept the signatures, index by index.

use anya_layer2::dlc::contracts::cets::DigitPath;
use ddk_manager::contract::AdaptorInfo;
use ddk_trie::digit_trie::DigitTrieDump;
use ddk_trie::multi_trie::{MultiTrieDump, MultiTrieNodeData};
use ddk_trie::RangeInfo;

/// Why a trie's paths could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrieError {
    /// Not a numeric contract with difference parameters (the only trie read here).
    #[error("not a numeric adaptor trie with difference parameters")]
    Unsupported,
    /// A node or store index that points outside the dump.
    #[error("the trie dump points outside itself")]
    Dangling,
    /// Two paths hold the same adaptor index, or an index is missing.
    #[error("adaptor index {0} is missing or held twice")]
    Indexes(usize),
}

/// The digit path and CET of every adaptor signature of `info`, in adaptor-signature order
/// (the first is adaptor index `adaptor_index_start`).
pub fn digit_paths(info: &AdaptorInfo, adaptor_index_start: usize) -> Result<Vec<DigitPath>, TrieError> {
    let AdaptorInfo::NumericalWithDifference(trie) = info else {
        return Err(TrieError::Unsupported);
    };
    let dump = trie.multi_trie.dump();
    let roots = dump.nb_tries.checked_sub(dump.nb_required).ok_or(TrieError::Dangling)? + 1;
    let mut found: Vec<(usize, DigitPath)> = Vec::new();
    for root in 0..roots {
        walk(&dump, root, root, &mut Vec::new(), &mut found)?;
    }
    found.sort_unstable_by_key(|(i, _)| *i);
    let mut paths = Vec::with_capacity(found.len());
    for (n, (index, path)) in found.into_iter().enumerate() {
        let expected = adaptor_index_start + n;
        if index != expected {
            return Err(TrieError::Indexes(expected.min(index)));
        }
        paths.push(path);
    }
    Ok(paths)
}

fn walk(
    dump: &MultiTrieDump<RangeInfo>,
    node: usize,
    oracle: usize,
    above: &mut Vec<(usize, Vec<usize>)>,
    out: &mut Vec<(usize, DigitPath)>,
) -> Result<(), TrieError> {
    match dump.node_data.get(node).ok_or(TrieError::Dangling)? {
        MultiTrieNodeData::Leaf(digits) => {
            for (prefix, info) in entries(digits)? {
                let mut oracles = above.clone();
                oracles.push((oracle, prefix));
                out.push((
                    info.adaptor_index,
                    DigitPath {
                        cet_index: info.cet_index,
                        oracles,
                    },
                ));
            }
        }
        MultiTrieNodeData::Node(digits) => {
            for (prefix, next) in entries(digits)? {
                above.push((oracle, prefix));
                for n in next {
                    walk(dump, n.store_index, n.trie_index, above, out)?;
                }
                above.pop();
            }
        }
    }
    Ok(())
}

/// Every `(digit path, data)` of a digit trie.
fn entries<T: Clone>(trie: &DigitTrieDump<T>) -> Result<Vec<(Vec<usize>, &T)>, TrieError> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, Vec<usize>)> = trie.root.map(|r| (r, Vec::new())).into_iter().collect();
    while let Some((index, above)) = stack.pop() {
        let node = trie.node_data.get(index).ok_or(TrieError::Dangling)?;
        let mut path = above;
        path.extend_from_slice(&node.prefix);
        if let Some(data) = &node.data {
            out.push((path.clone(), data));
        }
        for child in node.children.iter().flatten().flatten() {
            stack.push((*child, path.clone()));
        }
    }
    Ok(out)
}
