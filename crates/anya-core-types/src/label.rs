//! Validated human-readable identifiers.

use std::fmt;
use std::str::FromStr;

/// Longest label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;

/// A short identifier chosen by an operator: a key id, a wallet name, an account label.
///
/// One to [`MAX_LABEL_LEN`] bytes of ASCII letters, digits, `-`, `_` and `.`, not starting with
/// `.` or `-`. The restriction keeps labels safe inside file names, storage keys, log lines and
/// command lines without escaping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label(String);

/// Why a string is not a valid [`Label`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelError {
    /// The label is empty.
    #[error("label is empty")]
    Empty,
    /// The label is longer than [`MAX_LABEL_LEN`] bytes.
    #[error("label is {len} bytes, longer than {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The label holds a character outside the allowed set.
    #[error("label has a forbidden character at byte {position}")]
    ForbiddenCharacter {
        /// Byte offset of the first offending character.
        position: usize,
    },
}

impl Label {
    /// Validates `s` as a label.
    pub fn new(s: impl Into<String>) -> Result<Self, LabelError> {
        let s = s.into();
        if s.is_empty() {
            return Err(LabelError::Empty);
        }
        if s.len() > MAX_LABEL_LEN {
            return Err(LabelError::TooLong {
                len: s.len(),
                max: MAX_LABEL_LEN,
            });
        }
        for (position, b) in s.bytes().enumerate() {
            let ok = b.is_ascii_alphanumeric() || b == b'_' || ((b == b'-' || b == b'.') && position > 0);
            if !ok {
                return Err(LabelError::ForbiddenCharacter { position });
            }
        }
        Ok(Self(s))
    }

    /// The label as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Label {
    type Err = LabelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for Label {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(Label::new("k1.hot-wallet_2").is_ok());
        assert_eq!(Label::new(""), Err(LabelError::Empty));
        assert_eq!(Label::new("-x"), Err(LabelError::ForbiddenCharacter { position: 0 }));
        assert_eq!(Label::new("a/b"), Err(LabelError::ForbiddenCharacter { position: 1 }));
        assert_eq!(Label::new("é"), Err(LabelError::ForbiddenCharacter { position: 0 }));
        assert!(matches!(
            Label::new("a".repeat(65)),
            Err(LabelError::TooLong { len: 65, .. })
        ));
    }

    #[test]
    fn round_trips_through_str() {
        let l: Label = "abc".parse().expect("valid label");
        assert_eq!(l.to_string(), "abc");
    }
}
