use std::fmt;

/// Longest room name accepted.
pub const MAX_ROOM_LEN: usize = 64;

/// A validated room name: 1 to 64 ASCII letters, digits, `-` or `_`. Being a file name component of the
/// ring and a path segment of URLs, nothing else is allowed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
        if name.is_empty() {
            return Err(RoomNameError::Empty);
        }
        if name.len() > MAX_ROOM_LEN {
            return Err(RoomNameError::TooLong);
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(RoomNameError::BadCharacter);
        }
        Ok(RoomName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
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
}
