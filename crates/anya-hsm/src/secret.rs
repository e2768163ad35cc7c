//! Secret byte and string containers that wipe themselves and never print their contents.

use std::fmt;

use zeroize::Zeroizing;

/// Secret bytes (key material, decrypted plaintext, a BIP32 seed), wiped on drop.
///
/// `Debug` shows only the length; there is no `Display`. Equality is not offered: compare
/// secrets in constant time with [`ring`]'s primitives if you must.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Takes ownership of `bytes`; they are wiped when the value drops.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new secret.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// The secret bytes. Keep the borrow short and do not copy them into unwiped memory.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// A secret string (passphrase, mnemonic, extended private key), wiped on drop.
///
/// `Debug` is redacted; there is no `Display`.
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Takes ownership of `s`; it is wiped when the value drops.
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// Copies `s` into a new secret.
    pub fn from_str_secret(s: &str) -> Self {
        Self::new(s.to_owned())
    }

    /// The secret text. Keep the borrow short.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl From<&str> for SecretString {
    fn from(s: &str) -> Self {
        Self::from_str_secret(s)
    }
}
