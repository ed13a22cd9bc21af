//! The layout of the runtime directory, the one place processes find each other.
//!
//! ```text
//! RUNTIME_DIR/
//!   ingest.sock        control socket of ingest
//!   fanout-K.sock      control socket of fanout worker K
//!   rings/ROOM.ring    the media ring of ROOM
//! ```

use std::path::{Path, PathBuf};

use crate::RoomName;

pub fn ingest_socket(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("ingest.sock")
}

pub fn fanout_socket(runtime_dir: &Path, index: u32) -> PathBuf {
    runtime_dir.join(format!("fanout-{index}.sock"))
}

/// Where fanout worker `index` receives its wake-up datagrams from ingest (see `RingReader::want_wake`).
pub fn fanout_wake_socket(runtime_dir: &Path, index: u32) -> PathBuf {
    runtime_dir.join(format!("fanout-{index}.wake"))
}

/// The worker index of a fanout control socket's file name, if it is one.
pub fn fanout_index(file_name: &str) -> Option<u32> {
    file_name.strip_prefix("fanout-")?.strip_suffix(".sock")?.parse().ok()
}

pub fn rings_dir(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("rings")
}

pub fn ring(runtime_dir: &Path, room: &RoomName) -> PathBuf {
    rings_dir(runtime_dir).join(format!("{room}.ring"))
}

/// Creates the runtime directory and its `rings/` subdirectory, private to the user.
pub fn prepare(runtime_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(rings_dir(runtime_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_socket_names_round_trip() {
        let p = fanout_socket(Path::new("/x"), 12);
        assert_eq!(fanout_index(p.file_name().unwrap().to_str().unwrap()), Some(12));
        assert_eq!(fanout_index("ingest.sock"), None);
        assert_eq!(fanout_index("fanout-x.sock"), None);
    }
}
