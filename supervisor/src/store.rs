//! A machine's binary store: binaries it received, kept by digest, so that booting the same
//! binary again (on this host) uploads nothing, and peers can fetch them.
//!
//! The store is a directory (`BIGMACHINE_BINARY_STORE`, default `<tmp>/bigmachine-binaries-<uid>`)
//! of files named by their hex SHA-256 digest, mode 0755. It must be private (this user's,
//! mode 0700, not a symbolic link; created so): a store another user could write to is refused
//! with an error, so no binary of theirs is run. A binary enters it only after its
//! digest was checked; a file whose digest no longer matches its name is ignored.
//!
//! The store is bounded: after each binary it receives, it removes the least recently used
//! binaries until it holds at most `BIGMACHINE_BINARY_STORE_BYTES` bytes (default 4 GiB), never
//! one used in the last ten minutes (the longest a boot waits between storing a binary and
//! running it). A binary that is running or being read by a peer is unaffected by its removal
//! (Linux keeps an open or mapped file until it is closed; a machine serves its own running
//! binary to peers through `/proc/self/exe`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bigmachine_core::__internal::{cached_digest_of, current_uid, private_dir, Digester};
use bigmachine_core::{ByteStream, Error, FileIo, FileWriter, Kind, Result};

/// The environment variable naming the store's directory.
pub const ENV_STORE: &str = "BIGMACHINE_BINARY_STORE";

/// The environment variable bounding the store's size, in bytes.
pub const ENV_STORE_BYTES: &str = "BIGMACHINE_BINARY_STORE_BYTES";

/// The store's bound when the environment sets none.
const DEFAULT_LIMIT: u64 = 4 << 30;

/// How recently a binary was used for it to be kept whatever the bound.
const IN_USE: Duration = Duration::from_secs(10 * 60);

/// A directory of binaries by digest.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
    limit: u64,
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
                std::env::temp_dir().join(format!("bigmachine-binaries-{}", current_uid()))
            });
        let limit = match std::env::var(ENV_STORE_BYTES) {
            Ok(v) => v.parse().unwrap_or_else(|_| {
                tracing::warn!(value = %v, "{ENV_STORE_BYTES} is not a byte count; using the default");
                DEFAULT_LIMIT
            }),
            Err(_) => DEFAULT_LIMIT,
        };
        Self { dir, limit }
    }

    /// A store in `dir` holding at most `limit` bytes.
    #[cfg(test)]
    pub(crate) fn new(dir: impl Into<PathBuf>, limit: u64) -> Self {
        Self {
            dir: dir.into(),
            limit,
        }
    }

    /// The binary of `digest`, if the store has it (and it still has that digest), opened: what
    /// was checked is that open file, which an exec then runs (see [`Stored`]).
    pub(crate) async fn get(&self, digest: &str) -> Result<Option<Stored>> {
        valid_digest(digest)?;
        private_dir(&self.dir)?;
        let path = self.dir.join(digest);
        let opened = path.clone();
        let found = tokio::task::spawn_blocking(move || {
            let file = match std::fs::File::open(&opened) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io(&opened, e)),
            };
            let digest = cached_digest_of(&file, &opened)?;
            // Marks the binary used, for the store's bound: its access time, set explicitly
            // (mounts may not keep it) and never its modification time, which keys the digest
            // cache. Read-only: a running binary cannot be opened for writing, and futimens
            // needs ownership, not a writable descriptor. Best effort: without it the binary is
            // merely evicted sooner.
            let _ = file.set_times(std::fs::FileTimes::new().set_accessed(SystemTime::now()));
            Ok::<_, Error>(Some((digest, file)))
        })
        .await
        .map_err(|e| Error::new(Kind::Other, format!("digest task: {e}")))??;
        Ok(found.and_then(|(actual, file)| {
            (actual == digest).then(|| Stored {
                path,
                file: Arc::new(file),
            })
        }))
    }

    /// Writes `body` into the store as the binary of `digest`, hashing it as it arrives and
    /// refusing it as soon as it is larger than the store may hold; returns it, opened.
    pub(crate) async fn put(&self, digest: &str, mut body: ByteStream) -> Result<Stored> {
        valid_digest(digest)?;
        private_dir(&self.dir)?;
        let tmp = self.dir.join(format!(
            "{digest}.{}.{}.partial",
            std::process::id(),
            PARTIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _cleanup = RemoveOnDrop(tmp.clone());
        let written = async {
            let mut file = FileWriter::create(&tmp, FileIo::from_env()).await?;
            let mut hasher = Digester::default();
            let mut total = 0u64;
            while let Some(chunk) = body.next_chunk().await {
                let chunk = chunk?;
                total += chunk.len() as u64;
                if total > self.limit {
                    return Err(Error::fatal(
                        Kind::Invalid,
                        format!(
                            "a binary of more than {} bytes, the store's bound ({ENV_STORE_BYTES})",
                            self.limit
                        ),
                    ));
                }
                hasher.update(&chunk);
                file.write(chunk).await?;
            }
            // Every write done and synced: the file on disk must be as long as what was
            // hashed.
            file.finish(true).await?;
            let on_disk = tokio::fs::metadata(&tmp)
                .await
                .map_err(|e| io(&tmp, e))?
                .len();
            if on_disk != total {
                return Err(Error::new(
                    Kind::Other,
                    format!("{}: {on_disk} bytes written of {total}", tmp.display()),
                ));
            }
            Ok::<_, Error>((total, hasher.finish()))
        }
        .await;
        let (total, actual) = written?;
        if actual != digest {
            return Err(Error::fatal(
                Kind::Invalid,
                format!("received binary has digest {actual}, expected {digest}"),
            ));
        }
        tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(|e| io(&tmp, e))?;
        // Opened before it takes its name: the file the digest was computed over (in this
        // private directory nobody else can have written to it).
        let file = std::fs::File::open(&tmp).map_err(|e| io(&tmp, e))?;
        let path = self.dir.join(digest);
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| io(&path, e))?;
        tracing::info!(path = %path.display(), bytes = total, "binary stored");
        let (dir, limit) = (self.dir.clone(), self.limit);
        match tokio::task::spawn_blocking(move || evict(&dir, limit, SystemTime::now())).await {
            Ok(Ok(removed)) if removed > 0 => {
                tracing::info!(removed, limit, "least recently used binaries removed")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "bounding the binary store"),
            Err(e) => tracing::warn!(error = %e, "bounding the binary store"),
        }
        Ok(Stored {
            path,
            file: Arc::new(file),
        })
    }
}

/// A binary of the store, open: its digest was checked on this open file, so running it
/// through this handle ([`crate::exec`]) runs the bytes checked, whatever its path names
/// meanwhile.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    /// Where it is kept (for messages, and for peers to read).
    pub(crate) path: PathBuf,
    /// The file, open for reading.
    pub(crate) file: Arc<std::fs::File>,
}

impl PartialEq for Stored {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

/// Removes the least recently used binaries of `dir` (by access time) until it holds at
/// most `limit` bytes, keeping any used within [`IN_USE`] of `now`; returns how many it removed.
/// Files not named by a digest (partial uploads among them) are neither counted nor removed.
fn evict(dir: &Path, limit: u64, now: SystemTime) -> std::io::Result<usize> {
    let mut binaries = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_str().is_none_or(|n| valid_digest(n).is_err()) {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_file() {
            // Set on every use (see `get`); a new binary's is its arrival.
            binaries.push((meta.accessed()?, meta.len(), entry.path()));
        }
    }
    let mut total: u64 = binaries.iter().map(|b| b.1).sum();
    binaries.sort_by_key(|b| b.0);
    let mut removed = 0;
    for (used, len, path) in binaries {
        if total <= limit {
            break;
        }
        if now.duration_since(used).unwrap_or_default() < IN_USE {
            // Sorted by use: every later binary was used more recently still.
            break;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        total -= len;
    }
    Ok(removed)
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
        let store = Store::new(&dir, DEFAULT_LIMIT);
        let data = vec![7u8; 3 << 20];
        let digest = bigmachine_core::digest_bytes(&data);
        assert_eq!(store.get(&digest).await?, None);
        let wrong = bigmachine_core::digest_bytes(b"other");
        assert!(store
            .put(&wrong, ByteStream::from_bytes(data.clone()))
            .await
            .is_err());
        let stored = store
            .put(&digest, ByteStream::from_bytes(data.clone()))
            .await?;
        assert_eq!(store.get(&digest).await?, Some(stored.clone()));
        let back = ByteStream::from_file(stored.path.clone())
            .read_to_end(16 << 20)
            .await?;
        assert_eq!(back, data);
        assert!(store.get("not-a-digest").await.is_err());
        // Past the store's bound, a binary is refused as it streams in.
        let small = Store::new(&dir, 1 << 20);
        let refused = small.put(&digest, ByteStream::from_bytes(data)).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("store's bound")),
            "{refused:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test]
    async fn bounded_by_removing_the_least_recently_used() -> Result<()> {
        let dir =
            std::env::temp_dir().join(format!("bigmachine-store-evict-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mib = 1u64 << 20;
        let store = Store::new(&dir, 2 * mib + mib / 2);
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let mut stored = Vec::new();
        for fill in 1..=3u8 {
            let data = vec![fill; mib as usize];
            let digest = bigmachine_core::digest_bytes(&data);
            let path = store.put(&digest, ByteStream::from_bytes(data)).await?.path;
            // Binaries 1 and 2 were last used an hour ago, 2 after 1.
            let at = hour_ago + Duration::from_secs(u64::from(fill));
            std::fs::File::open(&path)?.set_times(std::fs::FileTimes::new().set_accessed(at))?;
            stored.push((digest, path));
        }
        // The third put went over the bound: the binary used longest ago left, the rest stay.
        // (The third's own time was set after its put, so it counted as just used.)
        assert!(!stored[0].1.exists(), "least recently used binary kept");
        assert!(stored[1].1.exists() && stored[2].1.exists());
        // Using binary 2 makes binary 3 the least recently used; a fourth put evicts it.
        let used = store.get(&stored[1].0).await?.map(|s| s.path);
        assert_eq!(used, Some(stored[1].1.clone()));
        let data = vec![4u8; mib as usize];
        let digest = bigmachine_core::digest_bytes(&data);
        let fourth = store.put(&digest, ByteStream::from_bytes(data)).await?.path;
        assert!(
            !stored[2].1.exists(),
            "binary 3 was the least recently used"
        );
        assert!(stored[1].1.exists() && fourth.exists());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn recently_used_binaries_stay_over_the_bound() -> std::io::Result<()> {
        let dir =
            std::env::temp_dir().join(format!("bigmachine-store-recent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let digest = bigmachine_core::digest_bytes(b"recent");
        std::fs::write(dir.join(&digest), b"recent")?;
        std::fs::write(dir.join(format!("{digest}.1.0.partial")), b"partial")?;
        // A bound of 0 bytes, yet the binary was used a minute ago: it stays, as does the
        // partial upload, which the store never counts.
        let now = SystemTime::now() + Duration::from_secs(60);
        assert_eq!(evict(&dir, 0, now)?, 0);
        assert!(dir.join(&digest).exists());
        // Eleven minutes on, it goes.
        assert_eq!(evict(&dir, 0, now + Duration::from_secs(600))?, 1);
        assert!(!dir.join(&digest).exists());
        assert!(dir.join(format!("{digest}.1.0.partial")).exists());
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
