//! Where a keystore passphrase comes from: a file, the `ANYA_PASSPHRASE` environment variable,
//! or the terminal (without echo). Never a command-line argument, which other users can read
//! in the process list.

use std::io::IsTerminal;
use std::path::Path;

use crate::SecretString;

/// The environment variable holding a passphrase.
pub const PASSPHRASE_ENV: &str = "ANYA_PASSPHRASE";

/// Why no passphrase was read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PassphraseError {
    /// The passphrase file could not be read, or its first line is empty.
    #[error("passphrase file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// No file, no variable, and no terminal to ask on.
    #[error("no passphrase: set ANYA_PASSPHRASE, give a passphrase file, or run on a terminal")]
    NoSource,
    /// The terminal could not be read.
    #[error("reading the passphrase from the terminal: {0}")]
    Terminal(#[source] std::io::Error),
    /// The two entries differ.
    #[error("the passphrases differ")]
    Mismatch,
}

/// The passphrase, from the first of: the first line of `file`, [`PASSPHRASE_ENV`], a prompt
/// on the terminal (with the `prompt` feature; asked twice when `confirm`, for a new keystore).
pub fn read_passphrase(file: Option<&Path>, confirm: bool) -> Result<SecretString, PassphraseError> {
    if let Some(path) = file {
        return read_secret_file(path);
    }
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(SecretString::new(p));
    }
    if !std::io::stdin().is_terminal() {
        return Err(PassphraseError::NoSource);
    }
    prompt(confirm)
}

/// The first line of `path` (a passphrase, a PIN, an RPC password), read into memory that is
/// wiped; an empty first line is an error.
pub fn read_secret_file(path: &Path) -> Result<SecretString, PassphraseError> {
    let text = SecretString::new(std::fs::read_to_string(path).map_err(|e| PassphraseError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?);
    let line = text.expose().lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(PassphraseError::File {
            path: path.display().to_string(),
            reason: "its first line is empty".to_owned(),
        });
    }
    Ok(SecretString::from_str_secret(line))
}

#[cfg(feature = "prompt")]
fn prompt(confirm: bool) -> Result<SecretString, PassphraseError> {
    let ask = |text: &str| {
        rpassword::prompt_password(text)
            .map(SecretString::new)
            .map_err(PassphraseError::Terminal)
    };
    let first = ask("passphrase: ")?;
    if confirm && ask("passphrase again: ")?.expose() != first.expose() {
        return Err(PassphraseError::Mismatch);
    }
    Ok(first)
}

#[cfg(not(feature = "prompt"))]
fn prompt(_confirm: bool) -> Result<SecretString, PassphraseError> {
    Err(PassphraseError::NoSource)
}
