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

/// The size in bytes of the file system `dir` is on (a tmpfs's limit), `None` if it says none (a tmpfs without a
/// limit says 0) or cannot be asked. Every ring takes its whole size when it is made, so this bounds how many fit.
pub fn file_system_bytes(dir: &Path) -> Option<u64> {
    let fs = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(fs.blocks() * fs.fragment_size()).filter(|&bytes| bytes > 0)
}

/// Creates the runtime directory and its `rings/` subdirectory, private to the user, and checks that both
/// are trustworthy (see [`check_private`]): whoever can write there can stand in for a process of deadsfu.
pub fn prepare(runtime_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(rings_dir(runtime_dir))?;
    check_private(runtime_dir, nix::unistd::geteuid().as_raw())?;
    check_private(&rings_dir(runtime_dir), nix::unistd::geteuid().as_raw())
}

/// Refuses a directory that is not a directory, is owned by a user other than `uid` (root's are accepted,
/// as systemd makes `RuntimeDirectory=` before handing it over), or can be written by group or others.
/// The error says which and what to do.
pub fn check_private(dir: &Path, uid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let denied = |reason: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, reason);
    let link = std::fs::symlink_metadata(dir)?;
    if link.file_type().is_symlink() && link.uid() != uid && link.uid() != 0 {
        return Err(denied(format!(
            "{} is a symbolic link owned by uid {}, not by this process's user (uid {uid}); remove it or set another runtime_dir",
            dir.display(),
            link.uid()
        )));
    }
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(denied(format!("{} is not a directory", dir.display())));
    }
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(denied(format!(
            "{} is owned by uid {}, not by this process's user (uid {uid}); remove it or set another runtime_dir",
            dir.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(denied(format!(
            "{} has mode {mode:04o}: group or others can write it; `chmod go-w` it or set another runtime_dir",
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_directory_others_can_write_or_own_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("deadsfu-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        prepare(&dir).expect("a new directory is made private");
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let me = nix::unistd::geteuid().as_raw();
        // systemd's RuntimeDirectoryMode=0750 is fine: the group reads, nobody else writes.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        check_private(&dir, me).expect("0750");
        for bad in [0o777, 0o770, 0o702] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(bad)).unwrap();
            let err = prepare(&dir).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
            assert!(err.to_string().contains("group or others can write it"), "{err}");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // Owned by someone else (seen from another uid than the owner's).
        let seen_by_another = check_private(&dir, me + 4242);
        if me == 0 {
            // Root's directories are accepted: systemd makes RuntimeDirectory= as root.
            seen_by_another.expect("root's directory");
        } else {
            let err = seen_by_another.unwrap_err();
            assert!(err.to_string().contains("is owned by uid"), "{err}");
        }
        let file = dir.join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(check_private(&file, me).unwrap_err().to_string().contains("not a directory"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fanout_socket_names_round_trip() {
        let p = fanout_socket(Path::new("/x"), 12);
        assert_eq!(fanout_index(p.file_name().unwrap().to_str().unwrap()), Some(12));
        assert_eq!(fanout_index("ingest.sock"), None);
        assert_eq!(fanout_index("fanout-x.sock"), None);
    }
}
