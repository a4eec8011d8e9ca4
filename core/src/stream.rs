//! Byte streams: arguments and replies of any length, moved as [`Bytes`] chunks with
//! back-pressure.
//!
//! A method takes a stream as its last parameter (`body: ByteStream`) and may return one
//! (`Result<ByteStream>`). Chunks are handed on as the transport delivers them: no byte of a
//! stream is copied by this crate (the framing is in [`crate::wire`]).
//!
//! Back-pressure: a reader pulls chunks as it goes, and QUIC flow control stops the writer when
//! the reader falls behind; a [`ByteSink`] waits when its channel is full. When a reader drops
//! its stream, the writer's next write fails, and a producer feeding a [`ByteSink`] sees
//! [`ByteSink::send`] fail with [`Kind::Canceled`]. A stream fed by a [`ByteSink`] ends well only
//! when its producer says so ([`ByteSink::finish`]).

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{Error, Kind, Result};
use crate::files::{FileIo, FileWriter};

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
    /// waits. The stream ends successfully once the sink and every clone of it called
    /// [`ByteSink::finish`], or with the error given to [`ByteSink::fail`]. A sink dropped without
    /// either (a producer that panicked, or returned early through `?`) end the stream with a
    /// [`Kind::Unavailable`] error: a reader never takes a truncated stream for a whole one.
    pub fn channel(capacity: usize) -> (ByteSink, Self) {
        let (tx, mut rx) = mpsc::channel(capacity.max(1));
        let unfinished = Arc::new(AtomicUsize::new(1));
        let done = unfinished.clone();
        let mut ended = false;
        let stream = futures::stream::poll_fn(move |cx| {
            if ended {
                return Poll::Ready(None);
            }
            match rx.poll_recv(cx) {
                Poll::Ready(None) => {
                    ended = true;
                    if done.load(Ordering::Acquire) == 0 {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Err(Error::new(
                            Kind::Unavailable,
                            "the stream's producer stopped without finishing it (its ByteSink \
                             was dropped): the stream is incomplete",
                        ))))
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    ended = true;
                    Poll::Ready(Some(Err(e)))
                }
                other => other,
            }
        });
        (ByteSink { tx, unfinished }, Self::from_stream(stream))
    }

    /// The file at `path` as a stream of chunks of up to 1 MiB, opened when first read, read as
    /// [`FileIo::from_env`] says (tokio's file pool unless it names io_uring). An error opening
    /// or reading it ends the stream with that error.
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Self::from_file_with(path, FileIo::from_env())
    }

    /// [`ByteStream::from_file`], read with `io`.
    pub fn from_file_with(path: impl Into<PathBuf>, io: FileIo) -> Self {
        crate::files::read(path.into(), io)
    }

    /// Writes the stream into the file at `path` (created or truncated), as
    /// [`FileIo::from_env`] says (tokio's file pool unless it names io_uring), without waiting
    /// for the disk; returns the bytes written. See [`FileWriter`] to choose how, or to sync.
    pub async fn write_to_file(mut self, path: impl Into<PathBuf>) -> Result<u64> {
        let mut file = FileWriter::create(path, FileIo::from_env()).await?;
        while let Some(chunk) = self.next_chunk().await {
            file.write(chunk?).await?;
        }
        file.finish(false).await
    }

    /// Ends the stream with [`Kind::DeadlineExceeded`] at `deadline`, or [`Kind::Canceled`]
    /// when `cancel` is canceled, whichever comes first (the errors name `what`); the source is
    /// dropped then, which stops its writer.
    pub(crate) fn bounded(
        self,
        deadline: Option<tokio::time::Instant>,
        cancel: Option<tokio_util::sync::CancellationToken>,
        what: String,
    ) -> Self {
        if deadline.is_none() && cancel.is_none() {
            return self;
        }
        let Self { inner, _writer } = self;
        let chunks = futures::stream::unfold(Some(inner), move |source| {
            let cancel = cancel.clone();
            let what = what.clone();
            async move {
                let mut source = source?;
                let expired = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => futures::future::pending().await,
                    }
                };
                let canceled = async {
                    match &cancel {
                        Some(token) => token.cancelled().await,
                        None => futures::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    () = canceled => Some((Err(Error::canceled(what)), None)),
                    () = expired => Some((Err(Error::deadline_exceeded(&what, None)), None)),
                    chunk = source.next() => chunk.map(|c| (c, Some(source))),
                }
            }
        });
        Self {
            inner: chunks.boxed(),
            _writer,
        }
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

/// The sending half of [`ByteStream::channel`]: [`send`](Self::send) chunks, then
/// [`finish`](Self::finish) (or [`fail`](Self::fail)). A sink dropped without either ends its
/// stream with an error.
#[derive(Debug)]
pub struct ByteSink {
    tx: mpsc::Sender<Result<Bytes>>,
    /// Sinks of this stream not yet finished.
    unfinished: Arc<AtomicUsize>,
}

/// A clone is one more producer: it too must finish for the stream to end well.
impl Clone for ByteSink {
    fn clone(&self) -> Self {
        self.unfinished.fetch_add(1, Ordering::AcqRel);
        Self {
            tx: self.tx.clone(),
            unfinished: self.unfinished.clone(),
        }
    }
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

    /// This producer is done: the stream ends successfully once every clone of the sink has
    /// finished too.
    pub fn finish(self) {
        self.unfinished.fetch_sub(1, Ordering::AcqRel);
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(mut s: ByteStream) -> (usize, Option<Error>) {
        let mut n = 0;
        while let Some(chunk) = s.next_chunk().await {
            match chunk {
                Ok(c) => n += c.len(),
                Err(e) => return (n, Some(e)),
            }
        }
        (n, None)
    }

    #[tokio::test]
    async fn a_finished_sink_ends_the_stream_well() {
        let (sink, stream) = ByteStream::channel(4);
        let clone = sink.clone();
        sink.send(vec![1u8; 3]).await.expect("reader alive");
        clone.send(vec![2u8; 4]).await.expect("reader alive");
        clone.finish();
        sink.finish();
        let (n, err) = drain(stream).await;
        assert_eq!(n, 7);
        assert!(err.is_none(), "a finished stream ended with {err:?}");
    }

    #[tokio::test]
    async fn a_sink_dropped_unfinished_ends_the_stream_with_an_error() {
        let (sink, stream) = ByteStream::channel(4);
        let producer = tokio::spawn(async move {
            sink.send(vec![0u8; 5]).await?;
            // A producer that gives up early, through `?`, without finishing.
            Err::<(), Error>(Error::other("the producer's own failure"))
        });
        let _ = producer.await;
        let (n, err) = drain(stream).await;
        assert_eq!(n, 5);
        let err = err.expect("a truncated stream must not end well");
        assert_eq!(err.kind(), Kind::Unavailable);
        assert!(err.to_string().contains("incomplete"), "{err}");
    }

    #[tokio::test]
    async fn every_clone_must_finish_for_the_stream_to_end_well() {
        let (sink, stream) = ByteStream::channel(4);
        let clone = sink.clone();
        sink.finish();
        // The other producer gives up without finishing.
        drop(clone);
        assert!(drain(stream).await.1.is_some());
    }

    #[tokio::test]
    async fn a_panicking_producer_does_not_end_the_stream_well() {
        let (sink, stream) = ByteStream::channel(4);
        let producer = tokio::spawn(async move {
            let _ = sink.send(vec![0u8; 2]).await;
            panic!("producer bug");
        });
        assert!(producer.await.is_err());
        assert!(drain(stream).await.1.is_some());
    }
}
