//! Reply streams as frames: each a little-endian `u32` length and that many bytes, closed by a
//! `0` (success) or by `u32::MAX`, a `u32` length and the archive of the error that ended the
//! stream.

use bytes::{Buf, Bytes};

use crate::buffers::Payload;
use crate::error::{Error, Kind, Result};

/// Marks the successful end of a reply stream.
pub const END_OK: u32 = 0;
/// Marks the end of a reply stream by an error, whose archive follows.
pub const END_ERR: u32 = u32::MAX;
/// The largest data frame.
pub const MAX_FRAME: usize = (u32::MAX - 1) as usize;
/// The largest error archive accepted at the end of a reply stream.
pub const MAX_ERROR: u32 = 1 << 20;

/// The header of a data frame of `len` bytes, which must be `1..=`[`MAX_FRAME`] (as the pieces of
/// [`split_data`] are): a zero length would end the stream.
pub fn data_header(len: usize) -> [u8; 4] {
    debug_assert!((1..=MAX_FRAME).contains(&len), "data frame of {len} bytes");
    u32::try_from(len.min(MAX_FRAME))
        .unwrap_or(END_ERR - 1)
        .to_le_bytes()
}

/// `chunk` cut into pieces of at most [`MAX_FRAME`] bytes, without copying (none for an empty
/// chunk: a data frame is never empty, since a zero length ends the stream).
pub fn split_data(chunk: Bytes) -> impl Iterator<Item = Bytes> {
    let mut rest = chunk;
    std::iter::from_fn(move || (!rest.is_empty()).then(|| rest.split_to(rest.len().min(MAX_FRAME))))
}

/// The trailer of a stream that ended successfully.
pub fn end_ok() -> [u8; 4] {
    END_OK.to_le_bytes()
}

/// The trailer of a stream that ended with `err`. An error whose archive would not fit in
/// [`MAX_ERROR`] bytes travels cut: its outermost kind and severity, and the start of its text.
pub fn end_err(err: &Error) -> Vec<u8> {
    const CUT: usize = 4096;
    let archive = match super::encode_error(err) {
        Ok(archive) if archive.len() <= MAX_ERROR as usize => archive,
        _ => {
            let text = err.to_string();
            let cut = Error::new(
                err.kind(),
                format!(
                    "{} (error cut to fit a stream's end)",
                    crate::text::prefix(&text, CUT)
                ),
            )
            .with_severity(err.severity());
            // An archive of a few KiB; should even it fail, the reader sees an undecodable error.
            super::encode_error(&cut).unwrap_or_default()
        }
    };
    let len = u32::try_from(archive.len()).unwrap_or(0);
    let mut trailer = Vec::with_capacity(8 + archive.len());
    trailer.extend_from_slice(&END_ERR.to_le_bytes());
    trailer.extend_from_slice(&len.to_le_bytes());
    trailer.extend_from_slice(&archive[..len as usize]);
    trailer
}

/// What a [`FrameDecoder`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Bytes of the stream (a data frame, or the part of one that has arrived).
    Data(Bytes),
    /// The end of the stream: `None` for success, else the error the writer ended it with
    /// (nested under [`Kind::Remote`], as method errors are).
    End(Option<Error>),
}

#[derive(Debug)]
enum State {
    /// Reading a frame's length (`have` of its 4 bytes so far).
    Len { buf: [u8; 4], have: usize },
    /// Inside a data frame with `left` bytes to come.
    Data { left: usize },
    /// Reading the length of the error archive.
    ErrLen { buf: [u8; 4], have: usize },
    /// Reading the error archive (`want` bytes in all).
    ErrBody { buf: Payload, want: usize },
    /// The stream's end was read.
    Ended,
}

/// Decodes a reply stream from its bytes, in pieces of any size. Data is handed on as slices of
/// the input, without copying. Does no I/O: feed it with [`FrameDecoder::decode`] and tell it
/// the input ended with [`FrameDecoder::finish`].
#[derive(Debug)]
pub struct FrameDecoder {
    state: State,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

fn fill(buf: &mut [u8; 4], have: &mut usize, input: &mut Bytes) -> Option<u32> {
    let n = (4 - *have).min(input.len());
    buf[*have..*have + n].copy_from_slice(&input[..n]);
    input.advance(n);
    *have += n;
    (*have == 4).then(|| u32::from_le_bytes(*buf))
}

impl FrameDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self {
            state: State::Len {
                buf: [0; 4],
                have: 0,
            },
        }
    }

    /// Consumes bytes from the front of `input` and returns the next frame, or `None` once
    /// `input` is used up without completing one. Bytes after the stream's end, or an error
    /// archive over [`MAX_ERROR`], are a [`Kind::Invalid`] error.
    pub fn decode(&mut self, input: &mut Bytes) -> Result<Option<Frame>> {
        while !input.is_empty() {
            match &mut self.state {
                State::Len { buf, have } => match fill(buf, have, input) {
                    None => {}
                    Some(END_OK) => {
                        self.state = State::Ended;
                        return Ok(Some(Frame::End(None)));
                    }
                    Some(END_ERR) => {
                        self.state = State::ErrLen {
                            buf: [0; 4],
                            have: 0,
                        }
                    }
                    Some(len) => self.state = State::Data { left: len as usize },
                },
                State::Data { left } => {
                    let data = input.split_to((*left).min(input.len()));
                    *left -= data.len();
                    if *left == 0 {
                        self.state = State::Len {
                            buf: [0; 4],
                            have: 0,
                        };
                    }
                    return Ok(Some(Frame::Data(data)));
                }
                State::ErrLen { buf, have } => {
                    if let Some(len) = fill(buf, have, input) {
                        if len > MAX_ERROR {
                            return Err(Error::fatal(
                                Kind::Invalid,
                                format!("stream error of {len} bytes (at most {MAX_ERROR})"),
                            ));
                        }
                        // The buffer grows with the bytes that arrive, not with the length
                        // announced.
                        let want = len as usize;
                        self.state = State::ErrBody {
                            buf: Payload::new(),
                            want,
                        };
                        if want == 0 {
                            return Ok(Some(self.end_with_error()));
                        }
                    }
                }
                State::ErrBody { buf, want } => {
                    let n = (*want - buf.len()).min(input.len());
                    buf.extend_from_slice(&input[..n]);
                    input.advance(n);
                    if buf.len() == *want {
                        return Ok(Some(self.end_with_error()));
                    }
                }
                State::Ended => {
                    return Err(Error::fatal(
                        Kind::Invalid,
                        "bytes after the end of a reply stream",
                    ))
                }
            }
        }
        Ok(None)
    }

    fn end_with_error(&mut self) -> Frame {
        let State::ErrBody { buf, .. } = std::mem::replace(&mut self.state, State::Ended) else {
            return Frame::End(Some(Error::fatal(Kind::Invalid, "no error archive")));
        };
        let cause = super::decode_error(&buf);
        Frame::End(Some(
            Error::new(Kind::Remote, "reply stream").caused_by(cause),
        ))
    }

    /// The input ended: fine after the stream's end, else the stream was cut (a temporary
    /// [`Kind::Net`] error: the transport broke, another try may succeed).
    pub fn finish(&self) -> Result<()> {
        match self.state {
            State::Ended => Ok(()),
            _ => Err(Error::temporary(
                Kind::Net,
                "reply stream ended without its trailer",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(chunks: &[&[u8]], end: Option<&Error>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for chunk in chunks {
            for piece in split_data(Bytes::copy_from_slice(chunk)) {
                out.extend_from_slice(&data_header(piece.len()));
                out.extend_from_slice(&piece);
            }
        }
        match end {
            None => out.extend_from_slice(&end_ok()),
            Some(e) => out.extend_from_slice(&end_err(e)),
        }
        Ok(out)
    }

    /// Decodes `bytes` fed in pieces of `step` bytes; returns the data and the end.
    fn decode(bytes: &[u8], step: usize) -> Result<(Vec<u8>, Option<Frame>)> {
        let mut dec = FrameDecoder::new();
        let mut data = Vec::new();
        for piece in bytes.chunks(step) {
            let mut input = Bytes::copy_from_slice(piece);
            while let Some(frame) = dec.decode(&mut input)? {
                match frame {
                    Frame::Data(d) => data.extend_from_slice(&d),
                    end => return Ok((data, Some(end))),
                }
            }
        }
        dec.finish()?;
        Ok((data, None))
    }

    #[test]
    fn frames_decode_in_pieces_of_any_size() -> Result<()> {
        let bytes = encode(&[b"hello", b"", b"world!"], None)?;
        for step in [1, 2, 3, 5, 7, bytes.len()] {
            let (data, end) = decode(&bytes, step)?;
            assert_eq!(data, b"helloworld!", "step {step}");
            assert_eq!(end, Some(Frame::End(None)));
        }
        Ok(())
    }

    #[test]
    fn an_error_trailer_carries_the_writers_error() -> Result<()> {
        let why = Error::fatal(Kind::Precondition, "disk full");
        let bytes = encode(&[b"partial"], Some(&why))?;
        for step in [1, 4, bytes.len()] {
            let (data, end) = decode(&bytes, step)?;
            assert_eq!(data, b"partial");
            let Some(Frame::End(Some(e))) = end else {
                panic!("no error end: {end:?}");
            };
            assert_eq!(e.kind(), Kind::Remote);
            assert_eq!(e.cause(), Some(&why));
        }
        Ok(())
    }

    #[test]
    fn an_error_too_large_for_a_trailer_travels_cut() -> Result<()> {
        let huge = Error::fatal(Kind::Precondition, "é".repeat(MAX_ERROR as usize));
        let bytes = encode(&[], Some(&huge))?;
        assert!(bytes.len() < 16 << 10, "{} bytes", bytes.len());
        let (data, end) = decode(&bytes, bytes.len())?;
        assert!(data.is_empty());
        let Some(Frame::End(Some(e))) = end else {
            panic!("no error end: {end:?}");
        };
        let cause = e.cause().map(|c| (c.kind(), c.severity()));
        assert_eq!(cause, Some((Kind::Precondition, crate::Severity::Fatal)));
        assert!(e.to_string().contains("error cut to fit"), "{e}");
        Ok(())
    }

    #[test]
    fn truncation_and_trailing_bytes_are_errors() -> Result<()> {
        let bytes = encode(&[b"abc"], None)?;
        for cut in 0..bytes.len() {
            let err = decode(&bytes[..cut], 1).err().map(|e| e.kind());
            assert_eq!(err, Some(Kind::Net), "cut at {cut}");
        }
        let mut dec = FrameDecoder::new();
        let mut input = Bytes::from([bytes.as_slice(), b"x"].concat());
        while let Ok(Some(Frame::Data(_))) = dec.decode(&mut input) {}
        assert!(dec.finish().is_ok(), "the end was decoded");
        assert_eq!(
            dec.decode(&mut input).err().map(|e| e.kind()),
            Some(Kind::Invalid)
        );
        let mut huge = Bytes::from([END_ERR.to_le_bytes(), u32::MAX.to_le_bytes()].concat());
        assert_eq!(
            FrameDecoder::new()
                .decode(&mut huge)
                .err()
                .map(|e| e.kind()),
            Some(Kind::Invalid)
        );
        Ok(())
    }
}
