//! Files as byte streams: [`ByteStream::from_file`](crate::ByteStream::from_file) reads ahead,
//! [`FileWriter`] writes behind, through io_uring on Linux where the kernel allows it and through
//! tokio's blocking file pool otherwise, chosen at run time ([`FileIo`]).
//!
//! io_uring serves only when asked for ([`FileIo::Uring`], or `BIGMACHINE_FILE_IO=uring`): on
//! this kind of host it won no consistent advantage over tokio for page-cached files
//! (BENCHMARKS.md, `cargo bench --bench files`).
//!
//! With io_uring, each open file has a thread of its own that keeps [`DEPTH`] reads or writes of
//! 1 MiB in flight: a read lands in the buffer that becomes the stream's chunk (no copy), and a
//! chunk written is handed to the kernel as it is. tokio's files go through a 2 MiB buffer of
//! their own (a copy each way) and one blocking-pool hop per operation.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Kind, Result};
use crate::stream::ByteStream;

/// The size of the chunks files are read in.
pub(crate) const CHUNK: usize = 1 << 20;

/// Reads or writes a file keeps in flight through io_uring.
pub(crate) const DEPTH: usize = 4;

/// The environment variable that picks how files are read and written: `auto` (the default),
/// `uring` or `tokio`.
pub const ENV_FILE_IO: &str = "BIGMACHINE_FILE_IO";

/// How files are read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FileIo {
    /// tokio, for now: on the hosts measured io_uring won no consistent advantage over it
    /// (`cargo bench --bench files`, BENCHMARKS.md), so it serves only when asked for. Kept as
    /// the place where a measured win would switch the default.
    #[default]
    Auto,
    /// io_uring for reads and writes of regular files (pipes and devices, which have no
    /// offsets, are read and written in order without it); opening a file fails where io_uring
    /// is not available.
    Uring,
    /// tokio's file operations (its blocking pool), everywhere.
    Tokio,
}

impl FileIo {
    /// The choice of [`ENV_FILE_IO`] (read once per process): [`FileIo::Auto`] when unset or
    /// not understood (the latter with a warning).
    pub fn from_env() -> Self {
        static CHOICE: OnceLock<FileIo> = OnceLock::new();
        *CHOICE.get_or_init(|| match std::env::var(ENV_FILE_IO) {
            Ok(v) => v.parse().unwrap_or_else(|e: Error| {
                tracing::warn!(error = %e, "{ENV_FILE_IO} ignored");
                Self::Auto
            }),
            Err(_) => Self::Auto,
        })
    }

    /// What this choice means on this host: [`FileIo::Auto`] is [`FileIo::Tokio`].
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto => Self::Tokio,
            other => other,
        }
    }
}

impl std::str::FromStr for FileIo {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Self::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(Self::Uring),
            "tokio" => Ok(Self::Tokio),
            _ => Err(Error::new(
                Kind::Invalid,
                format!("unknown file I/O {s:?} (auto, uring or tokio)"),
            )),
        }
    }
}

/// Whether this process can set up an io_uring (asked once).
pub fn uring_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let available = uring::available();
        tracing::debug!(available, "io_uring");
        available
    })
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::new(Kind::Other, format!("{}: {e}", path.display()))
}

/// The file at `path` as a stream of chunks of up to 1 MiB, read with `io` from when the stream
/// is first polled; an error ends the stream with that error.
pub(crate) fn read(path: PathBuf, io: FileIo) -> ByteStream {
    match io.resolve() {
        FileIo::Uring => {
            let (tx, rx) = mpsc::channel(DEPTH);
            let mut started = Some((path, tx));
            let mut rx = rx;
            ByteStream::from_stream(futures::stream::poll_fn(move |cx| {
                if let Some((path, tx)) = started.take() {
                    uring::spawn_reader(path, tx);
                }
                rx.poll_recv(cx)
            }))
        }
        _ => read_tokio(path),
    }
}

fn read_tokio(path: PathBuf) -> ByteStream {
    ByteStream::from_stream(futures::stream::unfold(
        (None::<tokio::fs::File>, path, false),
        move |(file, path, done)| async move {
            if done {
                return None;
            }
            let mut file = match file {
                Some(f) => f,
                None => match tokio::fs::File::open(&path).await {
                    Ok(f) => f,
                    Err(e) => return Some((Err(io_error(&path, e)), (None, path, true))),
                },
            };
            let mut buf = bytes::BytesMut::with_capacity(CHUNK);
            match file.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(buf.freeze()), (Some(file), path, false))),
                Err(e) => Some((Err(io_error(&path, e)), (None, path, true))),
            }
        },
    ))
}

/// A file being written chunk by chunk: with io_uring ([`FileIo::Uring`]), up to 4 chunks are
/// in the kernel's hands while the next ones arrive. [`FileWriter::finish`] says whether every byte was
/// written; a writer dropped unfinished leaves what was written so far.
#[derive(Debug)]
pub struct FileWriter {
    path: PathBuf,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Uring {
        tx: mpsc::Sender<uring::Msg>,
        /// The thread's answer, until it is received into `failed`.
        done: Option<oneshot::Receiver<std::io::Result<u64>>>,
        /// The error that stopped the thread, once known.
        failed: Option<Error>,
    },
    Tokio {
        file: tokio::fs::File,
        written: u64,
    },
}

impl FileWriter {
    /// Creates (or truncates) the file at `path`, to be written with `io`.
    pub async fn create(path: impl Into<PathBuf>, io: FileIo) -> Result<Self> {
        let path = path.into();
        let inner = match io.resolve() {
            FileIo::Uring => {
                if !uring_available() {
                    return Err(io_error(
                        &path,
                        std::io::Error::new(
                            std::io::ErrorKind::Unsupported,
                            "io_uring is not available on this host",
                        ),
                    ));
                }
                let create = path.clone();
                let file = tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::create(create)?;
                    let regular = file.metadata()?.is_file();
                    Ok::<_, std::io::Error>((file, regular))
                })
                .await
                .map_err(|e| {
                    Error::new(Kind::Other, format!("{}: open task: {e}", path.display()))
                })?
                .map_err(|e| io_error(&path, e))?;
                match file {
                    // Writes at offsets: a pipe or a device is written in order, by tokio.
                    (file, false) => Inner::Tokio {
                        file: tokio::fs::File::from_std(file),
                        written: 0,
                    },
                    (file, true) => {
                        let (tx, done) =
                            uring::spawn_writer(file).map_err(|e| io_error(&path, e))?;
                        Inner::Uring {
                            tx,
                            done: Some(done),
                            failed: None,
                        }
                    }
                }
            }
            _ => Inner::Tokio {
                file: tokio::fs::File::create(&path)
                    .await
                    .map_err(|e| io_error(&path, e))?,
                written: 0,
            },
        };
        Ok(Self { path, inner })
    }

    /// Appends `chunk`. With io_uring this returns once the chunk is queued; an error of an
    /// earlier write is reported here or by [`FileWriter::finish`].
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        match &mut self.inner {
            Inner::Uring { tx, .. } => {
                if tx.send(uring::Msg::Chunk(chunk)).await.is_err() {
                    // The writer thread stopped: its error is the answer.
                    return Err(self.failure().await);
                }
                Ok(())
            }
            Inner::Tokio { file, written } => {
                file.write_all(&chunk)
                    .await
                    .map_err(|e| io_error(&self.path, e))?;
                *written += chunk.len() as u64;
                Ok(())
            }
        }
    }

    /// Waits for every chunk to be written (and, if `sync`, for the file's data to reach the
    /// disk); returns the bytes written.
    pub async fn finish(self, sync: bool) -> Result<u64> {
        let Self { path, inner } = self;
        match inner {
            Inner::Uring { tx, done, failed } => {
                let _ = tx.send(uring::Msg::Finish { sync }).await;
                drop(tx);
                match (failed, done) {
                    (Some(e), _) => Err(e),
                    (None, Some(done)) => done
                        .await
                        .map_err(|_| thread_ended(&path))?
                        .map_err(|e| io_error(&path, e)),
                    (None, None) => Err(thread_ended(&path)),
                }
            }
            Inner::Tokio { mut file, written } => {
                // Flushed first: a failed last write is reported here (sync_all would drop it).
                file.flush().await.map_err(|e| io_error(&path, e))?;
                if sync {
                    file.sync_all().await.map_err(|e| io_error(&path, e))?;
                }
                Ok(written)
            }
        }
    }

    /// The error that stopped an io_uring writer (received once, then kept).
    async fn failure(&mut self) -> Error {
        let Inner::Uring { done, failed, .. } = &mut self.inner else {
            return thread_ended(&self.path);
        };
        if failed.is_none() {
            // Taken only once answered: a caller that stops waiting leaves it for the next.
            let answer = match done.as_mut() {
                Some(receiver) => receiver.await.ok(),
                None => None,
            };
            *done = None;
            *failed = Some(match answer {
                Some(Err(e)) => io_error(&self.path, e),
                _ => thread_ended(&self.path),
            });
        }
        failed.clone().unwrap_or_else(|| thread_ended(&self.path))
    }
}

fn thread_ended(path: &Path) -> Error {
    Error::new(
        Kind::Other,
        format!("{}: the file's writer thread ended", path.display()),
    )
}

#[cfg(target_os = "linux")]
mod uring;

#[cfg(not(target_os = "linux"))]
mod uring {
    //! io_uring is Linux's: elsewhere it is never available.
    use super::*;

    #[derive(Debug)]
    pub(crate) enum Msg {
        Chunk(Bytes),
        Finish { sync: bool },
    }

    pub(crate) fn available() -> bool {
        false
    }

    fn unsupported() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::Unsupported, "io_uring is Linux-only")
    }

    pub(crate) fn spawn_reader(path: PathBuf, tx: mpsc::Sender<Result<Bytes>>) {
        let _ = tx.try_send(Err(io_error(&path, unsupported())));
    }

    pub(crate) fn spawn_writer(
        _file: std::fs::File,
    ) -> std::io::Result<(mpsc::Sender<Msg>, oneshot::Receiver<std::io::Result<u64>>)> {
        Err(unsupported())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary one, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "bigmachine-files-{name}-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The ways this host can do file I/O: both here, tokio alone where io_uring is refused.
    fn ways() -> Vec<FileIo> {
        if uring_available() {
            vec![FileIo::Uring, FileIo::Tokio]
        } else {
            vec![FileIo::Tokio]
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ (i >> 16) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn files_round_trip_through_streams_and_writers() -> Result<()> {
        let dir = Scratch::new("round");
        // Several chunks, a partial last one, and chunks written in odd sizes.
        for len in [0, 1, CHUNK, 3 * CHUNK + 12_345, (DEPTH + 3) * CHUNK] {
            let data = pattern(len);
            for io in ways() {
                let path = dir.0.join(format!("{len}-{io:?}"));
                let mut w = FileWriter::create(&path, io).await?;
                for piece in data.chunks(100 * 1024 + 7) {
                    w.write(Bytes::copy_from_slice(piece)).await?;
                }
                assert_eq!(w.finish(true).await?, len as u64, "{io:?}");
                assert!(
                    std::fs::read(&path).map_err(Error::other)? == data,
                    "{io:?} wrote {len}"
                );
                for reader in ways() {
                    let back = ByteStream::from_file_with(&path, reader)
                        .read_to_end(64 << 20)
                        .await?;
                    assert!(back == data, "{reader:?} read {len} written by {io:?}");
                }
            }
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_written_to_a_file_is_the_file() -> Result<()> {
        let dir = Scratch::new("stream");
        let data = pattern(5 * CHUNK + 3);
        let (src, dst) = (dir.0.join("src"), dir.0.join("dst"));
        std::fs::write(&src, &data).map_err(Error::other)?;
        let n = ByteStream::from_file(&src).write_to_file(&dst).await?;
        assert_eq!(n, data.len() as u64);
        assert!(std::fs::read(&dst).map_err(Error::other)? == data);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_files_and_directories_fail_clearly() -> Result<()> {
        let dir = Scratch::new("missing");
        let missing = dir.0.join("no-such-file");
        for io in ways() {
            let e = ByteStream::from_file_with(&missing, io)
                .read_to_end(1 << 20)
                .await
                .err()
                .ok_or_else(|| Error::other("a missing file was read"))?;
            assert!(e.to_string().contains("no-such-file"), "{io:?}: {e}");
            let e = FileWriter::create(&dir.0, io)
                .await
                .err()
                .ok_or_else(|| Error::other("a directory was opened for writing"))?;
            assert!(
                e.to_string().contains(&*dir.0.to_string_lossy()),
                "{io:?}: {e}"
            );
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_that_stops_early_and_a_writer_dropped_leave_no_hang() -> Result<()> {
        let dir = Scratch::new("early");
        let path = dir.0.join("f");
        std::fs::write(&path, pattern(8 * CHUNK)).map_err(Error::other)?;
        for io in ways() {
            let mut s = ByteStream::from_file_with(&path, io);
            let first = s.next_chunk().await.transpose()?.map(|c| c.len());
            assert_eq!(first, Some(CHUNK));
            drop(s);
            let mut w = FileWriter::create(dir.0.join(format!("w-{io:?}")), io).await?;
            w.write(Bytes::from(pattern(CHUNK))).await?;
            drop(w);
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_is_read_in_order() -> Result<()> {
        // /dev/zero has no end and no offsets: read by plain reads, chunk after chunk.
        for io in ways() {
            let mut s = ByteStream::from_file_with("/dev/zero", io);
            for _ in 0..3 {
                let chunk = s.next_chunk().await.transpose()?.unwrap_or_default();
                assert!(
                    (1..=CHUNK).contains(&chunk.len()),
                    "{io:?}: {}",
                    chunk.len()
                );
                assert!(chunk.iter().all(|&b| b == 0));
            }
        }
        Ok(())
    }

    #[test]
    fn file_io_names_parse() {
        assert_eq!("uring".parse::<FileIo>().ok(), Some(FileIo::Uring));
        assert_eq!("TOKIO".parse::<FileIo>().ok(), Some(FileIo::Tokio));
        assert_eq!("auto".parse::<FileIo>().ok(), Some(FileIo::Auto));
        assert!("mmap".parse::<FileIo>().is_err());
        assert_eq!(FileIo::Auto.resolve(), FileIo::Tokio);
    }
}
