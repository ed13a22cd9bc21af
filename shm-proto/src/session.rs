use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};

/// Random bytes in a session id: 96 bits, so ids cannot be guessed.
pub const TOKEN_LEN: usize = 12;

/// The process that holds a session: ingest holds publishers, fanout worker `k` its viewers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    Ingest,
    Worker(u32),
}

/// A session's id, naming the process that holds it, so signaling knows where to send a `DELETE` or a switch
/// without asking anyone.
///
/// Its text form, in URLs (`/session/{id}`) and on the wire, is `i-` followed by [`TOKEN_LEN`] random bytes
/// in lowercase hex for a publisher, `w{k}-` and the bytes for a viewer of worker `k` (`w3-0a1b…`). Only this
/// exact form parses: no upper-case hex, no leading zeros in `k`, so one session has one id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct SessionId {
    owner: Owner,
    token: [u8; TOKEN_LEN],
}

/// Why a text is not a session id.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionIdError {
    #[error("session id must start with `i-` (a publisher) or `wK-` (a viewer of fanout worker K)")]
    Owner,
    #[error("session id must end in {} lowercase hex digits", 2 * TOKEN_LEN)]
    Token,
}

impl SessionId {
    /// The id of a new session held by `owner`; `token` must come from a random source.
    pub fn new(owner: Owner, token: [u8; TOKEN_LEN]) -> SessionId {
        SessionId { owner, token }
    }

    pub fn owner(&self) -> Owner {
        self.owner
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.owner {
            Owner::Ingest => f.write_str("i-")?,
            Owner::Worker(k) => write!(f, "w{k}-")?,
        }
        self.token.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl FromStr for SessionId {
    type Err = SessionIdError;

    fn from_str(text: &str) -> Result<SessionId, SessionIdError> {
        let (owner, token) = text.split_once('-').ok_or(SessionIdError::Owner)?;
        let owner = match owner.as_bytes() {
            b"i" => Owner::Ingest,
            [b'w', b'0'] => Owner::Worker(0),
            [b'w', b'1'..=b'9', rest @ ..] if rest.iter().all(u8::is_ascii_digit) => {
                Owner::Worker(owner[1..].parse().map_err(|_| SessionIdError::Owner)?)
            }
            _ => return Err(SessionIdError::Owner),
        };
        let token = token.as_bytes();
        if token.len() != 2 * TOKEN_LEN {
            return Err(SessionIdError::Token);
        }
        let mut bytes = [0u8; TOKEN_LEN];
        for (byte, pair) in bytes.iter_mut().zip(token.chunks_exact(2)) {
            *byte = (lower_hex(pair[0])? << 4) | lower_hex(pair[1])?;
        }
        Ok(SessionId { owner, token: bytes })
    }
}

fn lower_hex(digit: u8) -> Result<u8, SessionIdError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        _ => Err(SessionIdError::Token),
    }
}

impl TryFrom<String> for SessionId {
    type Error = SessionIdError;

    fn try_from(text: String) -> Result<SessionId, SessionIdError> {
        text.parse()
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: [u8; TOKEN_LEN] = [0x00, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x10, 0xfe, 0xff];

    #[test]
    fn text_form_names_the_owner() {
        let publisher = SessionId::new(Owner::Ingest, TOKEN);
        assert_eq!(publisher.to_string(), "i-000123456789abcdef10feff");
        let viewer = SessionId::new(Owner::Worker(3), TOKEN);
        assert_eq!(viewer.to_string(), "w3-000123456789abcdef10feff");
        let last = SessionId::new(Owner::Worker(u32::MAX), TOKEN);
        for id in [publisher, viewer, last] {
            assert_eq!(id.to_string().parse::<SessionId>(), Ok(id));
        }
        assert_eq!("w12-000123456789abcdef10feff".parse::<SessionId>().unwrap().owner(), Owner::Worker(12));
        assert_eq!("w0-000123456789abcdef10feff".parse::<SessionId>().unwrap().owner(), Owner::Worker(0));
    }

    #[test]
    fn only_the_exact_form_parses() {
        let owner = ["w-00", "x3-00", "w03-00", "w+3-00", "W3-00", "i", "", "w4294967296-00", "i3-00"];
        for text in owner {
            let text = text.replace("00", &"00".repeat(TOKEN_LEN));
            assert_eq!(text.parse::<SessionId>(), Err(SessionIdError::Owner), "{text}");
        }
        let token = [
            "i-",
            "w3-0001",
            "i-000123456789ABCDEF10FEFF",
            "i-000123456789abcdef10feff00",
            "i-000123456789abcdef10fef",
            "i-000123456789abcdef10fefg",
            "w3-000123456789abcdef/0feff",
            "i--00123456789abcdef10feff",
            "i-00012345é789abcdef10fef",
        ];
        for text in token {
            assert_eq!(text.parse::<SessionId>(), Err(SessionIdError::Token), "{text}");
        }
    }

    #[test]
    fn a_string_on_the_wire() {
        let id = SessionId::new(Owner::Worker(7), TOKEN);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#""w7-000123456789abcdef10feff""#);
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), id);
        let err = serde_json::from_str::<SessionId>(r#""w7-0001""#).unwrap_err();
        assert!(err.to_string().contains("24 lowercase hex digits"), "{err}");
    }
}
