//! Byte streams: arguments and replies of any length, moved as [`Bytes`] chunks with
//! back-pressure.
//!
//! A method takes a stream as its last parameter (`body: ByteStream`) and may return one
//! (`Result<ByteStream>`). Chunks are handed on as the transport delivers them: no byte of a
//! stream is copied by this crate (the framing is in [`crate::wire`]).
//!
//! Back-pressure: a reader pulls chunks as it goes, and QUIC flow control stops the writer when
//! the reader falls behind; a [`ByteSink`] waits when its channel is full. When a reader drops its
//! stream, the writer's next write fails, and a producer feeding a [`ByteSink`] sees
//! [`ByteSink::send`] fail with [`Kind::Canceled`].

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Kind, Result};

/// Aborts a task when dropped: ties a background writer to the stream that needs it.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A stream of byte chunks that ends with success or with an error.
pub struct ByteStream {
    inner: BoxStream<'static, Result<Bytes>>,
    _writer: Option<AbortOnDrop>,
}

impl fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteStream").finish_non_exhaustive()
    }
}

impl ByteStream {
    /// A stream of `chunks` (or errors) produced by any `Stream`.
    pub fn from_stream<S>(chunks: S) -> Self
    where
        S: Stream<Item = Result<Bytes>> + Send + 'static,
    {
        Self {
            inner: chunks.boxed(),
            _writer: None,
        }
    }

    /// A stream with no bytes.
    pub fn empty() -> Self {
        Self::from_stream(futures::stream::empty())
    }

    /// A stream of one chunk (none if `bytes` is empty).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self::from_stream(futures::stream::iter(
            (!bytes.is_empty()).then_some(Ok(bytes)),
        ))
    }

    /// A stream fed through a [`ByteSink`] that holds up to `capacity` chunks before its sender
    /// waits. The stream ends successfully when the sink is dropped, or with the error given to
    /// [`ByteSink::fail`].
    pub fn channel(capacity: usize) -> (ByteSink, Self) {
        let (tx, mut rx) = mpsc::channel(capacity.max(1));
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (ByteSink { tx }, Self::from_stream(stream))
    }

    /// The file at `path` as a stream of 1 MiB chunks, opened when first read. An error opening
    /// or reading it ends the stream with that error.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        use tokio::io::AsyncReadExt;
        let io = |path: &std::path::Path, e: std::io::Error| {
            Error::new(Kind::Other, format!("{}: {e}", path.display()))
        };
        Self::from_stream(futures::stream::unfold(
            (None::<tokio::fs::File>, path.into(), false),
            move |(file, path, done)| async move {
                if done {
                    return None;
                }
                let mut file = match file {
                    Some(f) => f,
                    None => match tokio::fs::File::open(&path).await {
                        Ok(f) => f,
                        Err(e) => return Some((Err(io(&path, e)), (None, path, true))),
                    },
                };
                let mut buf = vec![0u8; 1 << 20];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Bytes::from(buf)), (Some(file), path, false)))
                    }
                    Err(e) => Some((Err(io(&path, e)), (None, path, true))),
                }
            },
        ))
    }

    /// The next chunk; `None` at the (successful) end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes>> {
        self.inner.next().await
    }

    /// Reads the whole stream into memory, failing with [`Kind::Invalid`] past `limit` bytes.
    pub async fn read_to_end(mut self, limit: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            let chunk = chunk?;
            if out.len() + chunk.len() > limit {
                return Err(Error::fatal(
                    Kind::Invalid,
                    format!("stream longer than the limit of {limit} bytes"),
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Ties `writer` (the task writing the call's argument stream) to this reply stream: it is
    /// aborted when the stream is dropped.
    pub(crate) fn with_writer(mut self, writer: Option<AbortOnDrop>) -> Self {
        self._writer = writer;
        self
    }
}

impl Stream for ByteStream {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl From<Bytes> for ByteStream {
    fn from(bytes: Bytes) -> Self {
        Self::from_bytes(bytes)
    }
}

impl From<Vec<u8>> for ByteStream {
    fn from(bytes: Vec<u8>) -> Self {
        Self::from_bytes(bytes)
    }
}

/// The sending half of [`ByteStream::channel`].
#[derive(Debug, Clone)]
pub struct ByteSink {
    tx: mpsc::Sender<Result<Bytes>>,
}

impl ByteSink {
    /// Sends a chunk, waiting while the channel is full. Fails with [`Kind::Canceled`] once the
    /// reader has gone away (the caller dropped the stream, or the call ended).
    pub async fn send(&self, chunk: impl Into<Bytes>) -> Result<()> {
        self.tx
            .send(Ok(chunk.into()))
            .await
            .map_err(|_| Error::canceled("the stream's reader went away"))
    }

    /// Ends the stream with `err`.
    pub async fn fail(self, err: Error) {
        let _ = self.tx.send(Err(err)).await;
    }

    /// Completes when the reader has gone away.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}
