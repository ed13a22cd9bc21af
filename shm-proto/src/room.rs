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
///
/// The ring of one simulcast layer of a room's publisher has a name of its own, `ROOM~RID` ([`RoomName::layer`]):
/// `~` is never in a room name a user gives ([`RoomName::new`] refuses it), so a layer's ring can never be
/// taken for a room; the processes pass such names to each other on the wire.
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
    #[error("a layer's rid is 1 to 16 letters, digits, '-' and '_'")]
    BadRid,
}

impl RoomName {
    pub fn new(name: &str) -> Result<RoomName, RoomNameError> {
        check(name)?;
        Ok(RoomName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of the ring of this room's simulcast layer `rid` (1 to [`MAX_RID_LEN`] letters, digits, `-` or
    /// `_`, as RFC 8851 allows).
    pub fn layer(&self, rid: &str) -> Result<RoomName, RoomNameError> {
        check_rid(rid)?;
        Ok(RoomName(format!("{}{LAYER_MARK}{rid}", self.base().0)))
    }

    /// The room itself: for a layer's ring the room it belongs to, else this name.
    pub fn base(&self) -> RoomName {
        match self.0.split_once(LAYER_MARK) {
            Some((base, _)) => RoomName(base.to_string()),
            None => self.clone(),
        }
    }

    /// The simulcast layer a layer's ring carries.
    pub fn rid(&self) -> Option<&str> {
        self.0.split_once(LAYER_MARK).map(|(_, rid)| rid)
    }
}

/// Between a room's name and a layer's rid in the name of the layer's ring.
const LAYER_MARK: char = '~';
/// Longest rid of a simulcast layer accepted.
pub const MAX_RID_LEN: usize = 16;

pub(crate) fn check_rid(rid: &str) -> Result<(), RoomNameError> {
    if rid.is_empty()
        || rid.len() > MAX_RID_LEN
        || !rid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(RoomNameError::BadRid);
    }
    Ok(())
}

/// A name on the wire: a room's, or a layer's ring's.
fn check_wire(name: &str) -> Result<(), RoomNameError> {
    match name.split_once(LAYER_MARK) {
        Some((base, rid)) => check(base).and_then(|()| check_rid(rid)),
        None => check(name),
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
        check_wire(&name)?;
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

    #[test]
    fn a_layers_ring_is_named_apart_from_any_room() {
        let room = RoomName::new("lobby").unwrap();
        let layer = room.layer("h").unwrap();
        assert_eq!(layer.as_str(), "lobby~h");
        assert_eq!((layer.base(), layer.rid()), (room.clone(), Some("h")));
        assert_eq!((room.base(), room.rid()), (room.clone(), None));
        assert_eq!(layer.layer("l").unwrap().as_str(), "lobby~l", "a layer of a layer is a layer of the room");
        // Never from a user's name; on the wire, only room~rid with both parts valid.
        assert_eq!(RoomName::new("lobby~h"), Err(RoomNameError::BadCharacter));
        assert_eq!(serde_json::from_str::<RoomName>(r#""lobby~h""#).unwrap(), layer);
        for bad in [r#""lobby~""#, r#""~h""#, r#""lobby~h~m""#, r#""lobby~a/b""#, r#""lobby~aaaaaaaaaaaaaaaaa""#] {
            assert!(serde_json::from_str::<RoomName>(bad).is_err(), "{bad}");
        }
        for bad in ["", "a/b", "a~b", &"r".repeat(MAX_RID_LEN + 1)] {
            assert_eq!(room.layer(bad), Err(RoomNameError::BadRid), "{bad:?}");
        }
    }
}
