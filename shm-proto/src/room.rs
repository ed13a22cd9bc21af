use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest room name accepted.
pub const MAX_ROOM_LEN: usize = 64;

/// A validated room name: 1 to 64 ASCII letters, digits, `-` or `_`. Being a file name component of the
/// ring and a path segment of URLs, nothing else is allowed.
///
/// On the wire (the control protocol, `/rooms`) it is a plain string, checked again when read: a message that
/// names an invalid room fails to decode, so whoever holds a `RoomName` never validates it again.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoomName(String);

/// Why a room name was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoomNameError {
    #[error("room name is empty")]
    Empty,
    #[error("room name is longer than {MAX_ROOM_LEN} characters")]
    TooLong,
    #[error("room name may contain only letters, digits, '-' and '_'")]
    BadCharacter,
}

impl RoomName {
    pub fn new(name: &str) -> Result<RoomName, RoomNameError> {
        check(name)?;
        Ok(RoomName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check(name: &str) -> Result<(), RoomNameError> {
    if name.is_empty() {
        return Err(RoomNameError::Empty);
    }
    if name.len() > MAX_ROOM_LEN {
        return Err(RoomNameError::TooLong);
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(RoomNameError::BadCharacter);
    }
    Ok(())
}

impl TryFrom<String> for RoomName {
    type Error = RoomNameError;

    fn try_from(name: String) -> Result<RoomName, RoomNameError> {
        check(&name)?;
        Ok(RoomName(name))
    }
}

impl FromStr for RoomName {
    type Err = RoomNameError;

    fn from_str(name: &str) -> Result<RoomName, RoomNameError> {
        RoomName::new(name)
    }
}

impl From<RoomName> for String {
    fn from(name: RoomName) -> String {
        name.0
    }
}

impl AsRef<str> for RoomName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(RoomName::new("main-room_2").is_ok());
        assert_eq!(RoomName::new(""), Err(RoomNameError::Empty));
        assert_eq!(RoomName::new(&"a".repeat(65)), Err(RoomNameError::TooLong));
        assert!(RoomName::new(&"a".repeat(64)).is_ok());
        for bad in ["a/b", "..", "a b", "é", "a.ring", "a\0"] {
            assert_eq!(RoomName::new(bad), Err(RoomNameError::BadCharacter), "{bad:?}");
        }
    }

    #[test]
    fn a_string_on_the_wire_checked_when_read() {
        let room = RoomName::new("lobby_1").unwrap();
        assert_eq!(serde_json::to_string(&room).unwrap(), r#""lobby_1""#);
        assert_eq!(serde_json::from_str::<RoomName>(r#""lobby_1""#).unwrap(), room);
        for (bad, reason) in [(r#""a/b""#, "only letters"), (r#""""#, "empty"), (r#"7"#, "a string")] {
            let err = serde_json::from_str::<RoomName>(bad).unwrap_err().to_string();
            assert!(err.contains(reason), "{bad}: {err}");
        }
        let long = format!("\"{}\"", "a".repeat(MAX_ROOM_LEN + 1));
        assert!(serde_json::from_str::<RoomName>(&long).unwrap_err().to_string().contains("longer than 64"));
    }
}
