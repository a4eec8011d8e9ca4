//! Byte streams: arguments and replies of any length, moved as [`Bytes`] chunks with
//! back-pressure.
//!
//! A method takes a stream as its last parameter (`body: ByteStream`) and may return one
//! (`Result<ByteStream>`). On the wire, an argument stream is the rest of the call's QUIC stream
//! after the argument's archive, up to its end; a reply stream is a sequence of frames, each a
//! little-endian `u32` length and that many bytes, closed by a `0` (success) or by `u32::MAX`, a
//! `u32` length and the archive of the error that ended it. Chunks are handed on as the
//! transport delivers them: no byte of a stream is copied by this crate.
//!
//! Back-pressure: a reader pulls chunks as it goes, and QUIC flow control stops the writer when
//! the reader falls behind; a [`ByteSink`] waits when its channel is full. When a reader drops its
//! stream, the writer's next write fails, and a producer feeding a [`ByteSink`] sees
//! [`ByteSink::send`] fail with [`Kind::Canceled`].

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::codec::{self, Payload};
use crate::error::{Error, Kind, Result};

/// Marks the successful end of a reply stream.
const END_OK: u32 = 0;
/// Marks the end of a reply stream by an error, whose archive follows.
const END_ERR: u32 = u32::MAX;
/// The largest data frame.
const MAX_FRAME: usize = (u32::MAX - 1) as usize;
/// The largest error archive accepted at the end of a reply stream.
const MAX_ERROR: u32 = 1 << 20;

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

    pub(crate) fn with_writer(mut self, writer: Option<AbortOnDrop>) -> Self {
        self._writer = writer;
        self
    }

    /// The rest of `recv`, up to its end, as chunks (an argument stream).
    pub(crate) fn from_recv(recv: RecvStream) -> Self {
        Self::from_stream(futures::stream::unfold(Some(recv), |recv| async move {
            let mut recv = recv?;
            match recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => Some((Ok(chunk.bytes), Some(recv))),
                Ok(None) => None,
                Err(e) => Some((Err(e.into()), None)),
            }
        }))
    }

    /// A framed reply stream read from `recv`.
    pub(crate) fn from_frames(recv: RecvStream) -> Self {
        struct State {
            recv: RecvStream,
            left: usize,
        }
        Self::from_stream(futures::stream::unfold(
            Some(State { recv, left: 0 }),
            |state| async move {
                let mut s = state?;
                if s.left == 0 {
                    let mut len = [0u8; 4];
                    if let Err(e) = read_exact(&mut s.recv, &mut len).await {
                        return Some((Err(e), None));
                    }
                    match u32::from_le_bytes(len) {
                        END_OK => return None,
                        END_ERR => return Some((Err(read_error(&mut s.recv).await), None)),
                        n => s.left = n as usize,
                    }
                }
                match s.recv.read_chunk(s.left, true).await {
                    Ok(Some(chunk)) => {
                        s.left -= chunk.bytes.len();
                        Some((Ok(chunk.bytes), Some(s)))
                    }
                    Ok(None) => Some((Err(truncated()), None)),
                    Err(e) => Some((Err(e.into()), None)),
                }
            },
        ))
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

/// The file at `path` as a stream of 1 MiB chunks (opened when first read).
pub fn file_stream(path: std::path::PathBuf) -> ByteStream {
    use tokio::io::AsyncReadExt;
    let io = |path: &std::path::Path, e: std::io::Error| {
        Error::new(Kind::Other, format!("{}: {e}", path.display()))
    };
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

fn truncated() -> Error {
    Error::temporary(Kind::Net, "reply stream ended without its trailer")
}

async fn read_exact(recv: &mut RecvStream, buf: &mut [u8]) -> Result<()> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(truncated()),
        Err(quinn::ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

async fn read_error(recv: &mut RecvStream) -> Error {
    let mut len = [0u8; 4];
    if let Err(e) = read_exact(recv, &mut len).await {
        return e;
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_ERROR {
        return Error::fatal(Kind::Invalid, format!("stream error of {len} bytes"));
    }
    let mut payload = Payload::with_capacity(len as usize);
    payload.resize(len as usize, 0);
    match read_exact(recv, &mut payload).await {
        // The method's error, nested under Remote as method errors are.
        Ok(()) => {
            Error::new(Kind::Remote, "reply stream").caused_by(crate::wire::decode_error(&payload))
        }
        Err(e) => e,
    }
}

/// Writes `stream` to `send` as frames, then its end: success, or the error that ended it.
/// Returns the error if writing failed (the reader went away).
pub(crate) async fn write_frames(send: &mut SendStream, mut stream: ByteStream) -> Result<()> {
    use futures::FutureExt;
    loop {
        let next = std::panic::AssertUnwindSafe(stream.next_chunk())
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Some(Err(Error::from_panic("producing a reply stream", &*panic)))
            });
        let Some(item) = next else { break };
        match item {
            Ok(chunk) => {
                for piece in split(chunk) {
                    let len = Bytes::copy_from_slice(&(piece.len() as u32).to_le_bytes());
                    send.write_all_chunks(&mut [len, piece]).await?;
                }
            }
            Err(e) => {
                let archive = codec::encode(&e.to_wire())?;
                let mut trailer = Vec::with_capacity(8 + archive.len());
                trailer.extend_from_slice(&END_ERR.to_le_bytes());
                trailer.extend_from_slice(&(archive.len() as u32).to_le_bytes());
                trailer.extend_from_slice(&archive);
                send.write_all(&trailer).await?;
                send.finish()?;
                return Ok(());
            }
        }
    }
    send.write_all(&END_OK.to_le_bytes()).await?;
    send.finish()?;
    Ok(())
}

fn split(chunk: Bytes) -> impl Iterator<Item = Bytes> {
    let mut rest = chunk;
    std::iter::from_fn(move || (!rest.is_empty()).then(|| rest.split_to(rest.len().min(MAX_FRAME))))
}

/// A send stream that is reset, not finished, if dropped before [`Unfinished::finish`]: a
/// writer that is canceled midway must not look to the reader like a complete stream (quinn
/// finishes a dropped stream cleanly).
struct Unfinished(Option<SendStream>);

impl Unfinished {
    fn get(&mut self) -> Option<&mut SendStream> {
        self.0.as_mut()
    }

    fn finish(mut self) {
        if let Some(mut send) = self.0.take() {
            let _ = send.finish();
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(mut send) = self.0.take() {
            let _ = send.reset(2u32.into());
        }
    }
}

/// Writes an argument stream (raw, up to the end of the QUIC stream). A failing source, or a
/// writer dropped midway (the call was canceled), resets the stream, which the machine sees as
/// a broken argument rather than a short one.
pub(crate) async fn write_raw(send: SendStream, mut stream: ByteStream) {
    let mut send = Unfinished(Some(send));
    while let Some(item) = stream.next_chunk().await {
        match item {
            Ok(chunk) => {
                let Some(out) = send.get() else { return };
                if out.write_chunk(chunk).await.is_err() {
                    return; // the machine stopped reading
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "argument stream failed; resetting the call");
                return; // dropping `send` resets it
            }
        }
    }
    send.finish();
}
