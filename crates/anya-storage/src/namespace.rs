//! Namespaces and the limits on keys and values.

use std::fmt;
use std::sync::Arc;

use crate::StoreError;

/// Longest namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 128;
/// Longest key, in bytes. Keys are arbitrary bytes, including empty.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value, in bytes. Values are arbitrary bytes, including empty.
pub const MAX_VALUE_LEN: usize = 64 * 1024 * 1024;

/// A namespace: the first half of every key, so that independent users of one store (a keystore,
/// a wallet, an LDK channel manager) cannot see or overwrite each other's records.
///
/// One to [`MAX_NAMESPACE_LEN`] bytes of ASCII letters, digits and `_ - . / :`. The character
/// set excludes NUL, which the RocksDB backend uses as the namespace terminator, so that no
/// namespace is a byte prefix of another one's keys.
///
/// Cheap to clone: the name is shared, so a [`WriteBatch`](crate::WriteBatch) of many
/// operations on one namespace holds one copy of it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Namespace(Arc<str>);

impl Namespace {
    /// Validates `name` as a namespace.
    pub fn new(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_NAMESPACE_LEN {
            return Err(StoreError::InvalidNamespace { len: name.len() });
        }
        let ok = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/' | b':'));
        if !ok {
            return Err(StoreError::InvalidNamespace { len: name.len() });
        }
        Ok(Self(name.into()))
    }

    /// The namespace as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({:?})", self.0)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::KeyTooLong {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

pub(crate) fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(StoreError::ValueTooLarge {
            len: value.len(),
            max: MAX_VALUE_LEN,
        });
    }
    Ok(())
}

/// The smallest byte string greater than every string that starts with `prefix`, or `None`
/// when there is none (the prefix is empty or all `0xff`): the exclusive upper bound of a
/// prefix scan.
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_rules() {
        assert!(Namespace::new("hsm.keys").is_ok());
        assert!(Namespace::new("ldk/monitors:v1").is_ok());
        assert!(Namespace::new("").is_err());
        assert!(Namespace::new("a\0b").is_err());
        assert!(Namespace::new("a b").is_err());
        assert!(Namespace::new("x".repeat(MAX_NAMESPACE_LEN)).is_ok());
        assert!(Namespace::new("x".repeat(MAX_NAMESPACE_LEN + 1)).is_err());
    }

    #[test]
    fn successor() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff\xff"), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
