//! Directories only this user may use: where the binaries a machine executes, and the digests
//! that vouch for them, are kept. A directory another user could write to (one they created
//! first in a shared `/tmp`, or one open to the group) is refused: its binaries could be theirs.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use crate::error::{Error, Kind, Result};

/// This process's effective user id.
pub fn current_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Creates `dir` (and its missing parents) with mode 0700 if it does not exist, then checks it
/// is private: a real directory (not a symbolic link), owned by this user, with no permission
/// for the group or others. Anything else is a fatal [`Kind::Precondition`] error saying why.
///
/// Only `dir` itself is checked, and entries are then opened by path: its parent must not let
/// other users rename its entries (the sticky `/tmp` does not; a directory others may write
/// without the sticky bit would let them swap `dir` after the check).
pub fn private_dir(dir: &Path) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::fatal(
            Kind::Precondition,
            format!(
                "{} {why}: refused, as another user could place binaries there (remove it, or \
                 name another directory)",
                dir.display()
            ),
        ))
    };
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        return refuse(format!("cannot be created ({e})"));
    }
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) => return refuse(format!("cannot be inspected ({e})")),
    };
    let uid = current_uid();
    if meta.file_type().is_symlink() {
        refuse("is a symbolic link".to_string())
    } else if !meta.is_dir() {
        refuse("is not a directory".to_string())
    } else if meta.uid() != uid {
        refuse(format!(
            "is owned by uid {}, not by this user ({uid})",
            meta.uid()
        ))
    } else if meta.mode() & 0o077 != 0 {
        refuse(format!(
            "is open to other users (mode {:o})",
            meta.mode() & 0o777
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "bigmachine-private-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ))
    }

    #[test]
    fn a_new_directory_is_made_private() -> Result<()> {
        let dir = scratch("new").join("store");
        private_dir(&dir)?;
        let mode = std::fs::metadata(&dir)?.mode() & 0o777;
        let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(&dir));
        assert_eq!(mode, 0o700);
        Ok(())
    }

    #[test]
    fn open_or_linked_directories_are_refused() -> Result<()> {
        let root = scratch("open");
        let open = root.join("open");
        std::fs::create_dir_all(&open)?;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o770))?;
        let link = root.join("link");
        let target = root.join("target");
        std::fs::create_dir_all(&target)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::symlink(&target, &link)?;
        let open_err = private_dir(&open).err();
        let link_err = private_dir(&link).err();
        let _ = std::fs::remove_dir_all(&root);
        let open_err = open_err.ok_or_else(|| Error::other("a group-writable directory passed"))?;
        assert!(
            open_err.to_string().contains("open to other users"),
            "{open_err}"
        );
        assert_eq!(open_err.kind(), Kind::Precondition);
        let link_err = link_err.ok_or_else(|| Error::other("a symbolic link passed"))?;
        assert!(link_err.to_string().contains("symbolic link"), "{link_err}");
        Ok(())
    }
}
