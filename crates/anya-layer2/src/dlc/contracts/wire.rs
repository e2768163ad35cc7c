//! DLC messages as bytes: `ddk-messages`' serialization, which begins with the big-endian
//! `u16` message type of dlcspecs (42778 offer, 42780 accept, 42782 sign).
//!
//! [`decode_message`] is the one entry point for message bytes from outside: it reads the
//! offer, accept and sign messages of contracts (channel and other messages are refused: anya
//! runs no DLC channels), and accepts only the canonical encoding, the bytes
//! [`encode_message`] gives back for what was read. `ddk-messages` alone also reads other
//! encodings of one message (an offer without its protocol version, TLV headers of embedded
//! announcements and events that are read but not checked), so that without this rule one
//! message would have several byte strings and several hashes.

use ddk_messages::types::{ACCEPT_TYPE, OFFER_TYPE, SIGN_TYPE};
use ddk_messages::Message;
use lightning::util::ser::Writeable;

/// Why message bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer than the two bytes of the type.
    #[error("a DLC message needs at least its 2-byte type")]
    Truncated,
    /// A type that is not a contract message.
    #[error("message type {0} is not a DLC contract message")]
    UnknownType(u16),
    /// The message does not decode.
    #[error("message type {ty}: {reason}")]
    Malformed {
        /// Its type.
        ty: u16,
        /// What the decoder said.
        reason: String,
    },
    /// Bytes after the message.
    #[error("{0} bytes after the message")]
    Trailing(u64),
    /// The message reads, but these bytes are not its canonical encoding.
    #[error("message type {0} is not in its canonical encoding")]
    NonCanonical(u16),
}

/// The message's serialization (its type first).
pub fn encode_message(message: &Message) -> Vec<u8> {
    message.encode()
}

/// Reads one whole contract message (offer, accept or sign) in its canonical encoding.
pub fn decode_message(bytes: &[u8]) -> Result<Message, WireError> {
    let ty = match bytes {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => return Err(WireError::Truncated),
    };
    if ![OFFER_TYPE, ACCEPT_TYPE, SIGN_TYPE].contains(&ty) {
        return Err(WireError::UnknownType(ty));
    }
    // Each message's reader reads (and checks) the type itself.
    let mut cursor = lightning::io::Cursor::new(bytes);
    let read = ddk_messages::message_handler::read_dlc_message(ty, &mut cursor).map_err(|e| WireError::Malformed {
        ty,
        reason: format!("{e:?}"),
    })?;
    if cursor.position() != bytes.len() as u64 {
        return Err(WireError::Trailing(bytes.len() as u64 - cursor.position()));
    }
    match read {
        Some(ddk_messages::WireMessage::Message(message)) if message.encode() == bytes => Ok(message),
        Some(ddk_messages::WireMessage::Message(_)) => Err(WireError::NonCanonical(ty)),
        _ => Err(WireError::UnknownType(ty)),
    }
}
