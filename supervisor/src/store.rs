//! A machine's binary store: binaries it received, kept by digest, so that booting the same
//! binary again (on this host) uploads nothing, and peers can fetch them.
//!
//! The store is a directory (`BIGMACHINE_BINARY_STORE`, default `<tmp>/bigmachine-binaries-<uid>`)
//! of files named by their hex SHA-256 digest, mode 0755. A binary enters it only after its
//! digest was checked; a file whose digest no longer matches its name is ignored.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bigmachine_core::__internal::cached_digest;
use bigmachine_core::{digest_file, ByteStream, Error, Kind, Result};
use tokio::io::AsyncWriteExt;

/// The environment variable naming the store's directory.
pub const ENV_STORE: &str = "BIGMACHINE_BINARY_STORE";

/// A directory of binaries by digest.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
}

fn valid_digest(digest: &str) -> Result<()> {
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Error::fatal(
            Kind::Invalid,
            format!("{digest:?} is not a SHA-256 digest"),
        ))
    }
}

impl Store {
    /// The store named by the environment, or the per-user default.
    pub(crate) fn from_env() -> Self {
        let dir = std::env::var_os(ENV_STORE)
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                // SAFETY: getuid(2) cannot fail and touches no memory.
                let uid = unsafe { libc::getuid() };
                std::env::temp_dir().join(format!("bigmachine-binaries-{uid}"))
            });
        Self { dir }
    }

    /// A store in `dir`.
    #[cfg(test)]
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The path of the binary of `digest`, if the store has it (and it still has that digest).
    pub(crate) async fn get(&self, digest: &str) -> Result<Option<PathBuf>> {
        valid_digest(digest)?;
        let path = self.dir.join(digest);
        if tokio::fs::metadata(&path).await.is_err() {
            return Ok(None);
        }
        let checked = path.clone();
        let actual = tokio::task::spawn_blocking(move || cached_digest(&checked))
            .await
            .map_err(|e| Error::new(Kind::Other, format!("digest task: {e}")))??;
        Ok((actual == digest).then_some(path))
    }

    /// Writes `body` into the store as the binary of `digest`, checking the digest; returns
    /// its path.
    pub(crate) async fn put(&self, digest: &str, mut body: ByteStream) -> Result<PathBuf> {
        valid_digest(digest)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| io(&self.dir, e))?;
        let tmp = self.dir.join(format!(
            "{digest}.{}.{}.partial",
            std::process::id(),
            PARTIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _cleanup = RemoveOnDrop(tmp.clone());
        let written = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| io(&tmp, e))?;
            let mut total = 0u64;
            while let Some(chunk) = body.next_chunk().await {
                let chunk = chunk?;
                total += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(|e| io(&tmp, e))?;
            }
            file.sync_all().await.map_err(|e| io(&tmp, e))?;
            Ok::<_, Error>(total)
        }
        .await;
        let total = written?;
        let hashed = tmp.clone();
        let actual = tokio::task::spawn_blocking(move || digest_file(&hashed))
            .await
            .map_err(|e| Error::new(Kind::Other, format!("digest task: {e}")))??;
        if actual != digest {
            return Err(Error::fatal(
                Kind::Invalid,
                format!("received binary has digest {actual}, expected {digest}"),
            ));
        }
        tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(|e| io(&tmp, e))?;
        let path = self.dir.join(digest);
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io(&path, e))?;
        tracing::info!(path = %path.display(), bytes = total, "binary stored");
        Ok(path)
    }
}

/// Numbers the partial files of concurrent uploads.
static PARTIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Removes a partial file however its upload ends (after the rename there is nothing left to
/// remove).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::new(Kind::Other, format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_by_checked_digest() -> Result<()> {
        let dir =
            std::env::temp_dir().join(format!("bigmachine-store-test-{}", std::process::id()));
        let store = Store::new(&dir);
        let data = vec![7u8; 3 << 20];
        let digest = bigmachine_core::digest_bytes(&data);
        assert_eq!(store.get(&digest).await?, None);
        let wrong = bigmachine_core::digest_bytes(b"other");
        assert!(store
            .put(&wrong, ByteStream::from_bytes(data.clone()))
            .await
            .is_err());
        let path = store
            .put(&digest, ByteStream::from_bytes(data.clone()))
            .await?;
        assert_eq!(store.get(&digest).await?, Some(path.clone()));
        let back = ByteStream::from_file(path).read_to_end(16 << 20).await?;
        assert_eq!(back, data);
        assert!(store.get("not-a-digest").await.is_err());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
