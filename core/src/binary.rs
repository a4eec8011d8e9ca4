//! The binary machines run: its digest, and how it is shipped to machines that run another.
//!
//! The driver compares the digest a machine reports (`Supervisor.info`) with the digest of the
//! binary it wants the machine to run (its own, unless [`crate::Params::binary`] names another).
//! When they differ, it uploads the binary in [`UPLOAD_CHUNK`]-sized pieces, each appended to a
//! temporary file on the machine, and has the machine exec it.

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::error::{Error, Kind, Result};

/// Size of one upload chunk.
pub const UPLOAD_CHUNK: usize = 4 << 20;

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

/// Digest of the running binary, computed once.
pub fn current_digest() -> Result<&'static str> {
    static DIGEST: OnceLock<std::result::Result<String, Error>> = OnceLock::new();
    DIGEST
        .get_or_init(|| {
            let exe = std::env::current_exe()
                .map_err(|e| Error::new(Kind::Other, format!("current executable: {e}")))?;
            digest_file(&exe)
        })
        .as_deref()
        .map_err(Clone::clone)
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::new(Kind::Other, format!("{}: {e}", path.display())).caused_by(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

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
