//! The binary machines run: its digest, and how it is shipped to machines that run another.
//!
//! The driver compares the digest a machine reports (`Supervisor.info`) with the digest of the
//! binary it wants the machine to run (its own, unless [`crate::Params::binary`] names another).
//! When they differ, the machine takes the binary from its own store (kept by digest from an
//! earlier boot), else fetches it from a running machine that runs it (so a large cluster does
//! not boot through the driver's uplink alone), else receives it streamed from the driver; then
//! it re-executes into it.

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::error::{Error, Kind, Result};

/// Hex SHA-256 digest of an open file's contents, read from its start in 1 MiB pieces (without
/// moving its offset).
fn digest_of(file: &std::fs::File) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut hasher = Digester::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hasher.finish())
}

/// A SHA-256 digest computed piece by piece, as a binary streams in.
#[derive(Debug, Default, Clone)]
pub struct Digester(Sha256);

impl Digester {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The hex digest of everything added.
    pub fn finish(self) -> String {
        format!("{:x}", self.0.finalize())
    }
}

/// Hex SHA-256 digest of the file at `path`, read in 1 MiB pieces.
pub fn digest_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| io_error(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Hex SHA-256 digest of bytes.
pub fn digest_bytes(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Digest of the running binary, computed once per process.
///
/// Hashing a large binary (a release build with debug info is 100 MB and more) in every machine
/// of a host would dominate start-up, so digests are also kept in a per-user cache in the
/// temporary directory, keyed by the file's device, inode, size and modification time (as build
/// tools judge that a file is unchanged); machines started from the same file on the same host
/// read it instead of hashing. The cache is used only while its directory is private (see
/// `private_dir`): another user cannot plant a digest there.
pub fn current_digest() -> Result<&'static str> {
    static DIGEST: OnceLock<std::result::Result<String, Error>> = OnceLock::new();
    DIGEST
        .get_or_init(|| cached_digest(&running_binary()?))
        .as_deref()
        .map_err(Clone::clone)
}

/// A path that opens the binary this process runs: `/proc/self/exe`, which names the running
/// file itself even once its path names another file (a rebuild, a deploy) or none, else
/// [`std::env::current_exe`]. What this process hashes, uploads and starts machines from is
/// this one file.
pub fn running_binary() -> Result<std::path::PathBuf> {
    let proc_exe = Path::new("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe.to_path_buf());
    }
    std::env::current_exe().map_err(|e| Error::new(Kind::Other, format!("current executable: {e}")))
}

/// The digest of `path`, from the cache when its identity is unchanged.
pub fn cached_digest(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    cached_digest_of(&file, path)
}

/// The digest of the open `file` (found at `path`, for messages), from the cache when its
/// identity is unchanged. What is hashed, or looked up, is this open file, whatever `path` names
/// meanwhile: the digest vouches for the bytes a caller then runs through the same handle.
pub fn cached_digest_of(file: &std::fs::File, path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().map_err(|e| io_error(path, e))?;
    let key = format!(
        "{}-{}-{}-{}.{}",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    let uid = crate::private_dir::current_uid();
    let dir = std::env::temp_dir().join(format!("bigmachine-digests-{uid}"));
    // A cache another user could write to would vouch for their binaries: it is used only
    // when private, and otherwise the file is hashed.
    let private = match crate::private_dir::private_dir(&dir) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "digest cache not used");
            false
        }
    };
    let entry = dir.join(&key);
    if private {
        if let Ok(digest) = std::fs::read_to_string(&entry) {
            if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(digest);
            }
        }
    }
    let digest = digest_of(file).map_err(|e| io_error(path, e))?;
    if !private {
        return Ok(digest);
    }
    // Best effort: a cache that cannot be written only costs time.
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = dir.join(format!("{key}.{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(digest.as_bytes())?;
        std::fs::rename(&tmp, &entry)
    })();
    if let Err(e) = written {
        tracing::debug!(error = %e, "digest cache not written");
    }
    Ok(digest)
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::new(Kind::Other, format!("{}: {e}", path.display())).caused_by(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_digest_matches_and_tracks_changes() -> Result<()> {
        let path =
            std::env::temp_dir().join(format!("bigmachine-digest-test-{}", std::process::id()));
        std::fs::write(&path, b"abc")?;
        let first = cached_digest(&path)?;
        assert_eq!(first, digest_bytes(b"abc"));
        assert_eq!(
            cached_digest(&path)?,
            first,
            "second read comes from the cache"
        );
        std::fs::write(&path, b"abcd")?; // new size: new key
        assert_eq!(cached_digest(&path)?, digest_bytes(b"abcd"));
        std::fs::remove_file(&path)?;
        Ok(())
    }

    #[test]
    fn digests_agree() -> Result<()> {
        let exe = std::env::current_exe()?;
        let bytes = std::fs::read(&exe)?;
        assert_eq!(digest_file(&exe)?, digest_bytes(&bytes));
        assert_eq!(current_digest()?, digest_bytes(&bytes));
        assert_eq!(
            digest_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        Ok(())
    }
}
