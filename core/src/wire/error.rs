//! Errors as they travel: the cause chain flattened, outermost first, as an rkyv archive.

use crate::buffers::Payload;
use crate::codec;
use crate::error::{Error, Kind, Result, Severity};

/// The deepest cause chain sent or accepted; deeper causes are dropped.
pub const MAX_ERROR_DEPTH: usize = 32;

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct WireError {
    frames: Vec<WireFrame>,
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct WireFrame {
    kind: u8,
    severity: u8,
    message: String,
}

/// The archive of `err` and its causes (at most [`MAX_ERROR_DEPTH`]).
pub fn encode_error(err: &Error) -> Result<Payload> {
    let wire = WireError {
        frames: err
            .chain()
            .take(MAX_ERROR_DEPTH)
            .map(|e| WireFrame {
                kind: e.kind().code(),
                severity: e.severity().code(),
                message: e.message().to_string(),
            })
            .collect(),
    };
    codec::encode(&wire)
}

/// The error whose archive is `bytes` (aligned or not). Bytes that are no such archive give a
/// [`Kind::Invalid`] error saying so: decoding an error never fails. Unknown kinds and
/// severities from a newer peer become [`Kind::Other`] and [`Severity::Unknown`].
pub fn decode_error(bytes: &[u8]) -> Error {
    let wire = match codec::decode::<WireError>(bytes) {
        Ok(wire) => wire,
        Err(e) => return Error::fatal(Kind::Invalid, "undecodable error from peer").caused_by(e),
    };
    let mut error: Option<Error> = None;
    for frame in wire.frames.into_iter().take(MAX_ERROR_DEPTH).rev() {
        let e = Error::new(Kind::from_code(frame.kind), frame.message)
            .with_severity(Severity::from_code(frame.severity));
        error = Some(match error {
            Some(cause) => e.with_cause(cause),
            None => e,
        });
    }
    error.unwrap_or_else(|| Error::new(Kind::Other, "empty error from peer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_survives_the_wire() -> Result<()> {
        let e = Error::new(Kind::Remote, "from m1")
            .with_severity(Severity::Unknown)
            .with_cause(Error::fatal(Kind::Invalid, "bad input"));
        let back = decode_error(&encode_error(&e)?);
        assert_eq!(back, e);
        assert_eq!(
            back.severity(),
            Severity::Unknown,
            "severities travel as sent"
        );
        assert_eq!(
            back.to_string(),
            "remote error: from m1: invalid: bad input"
        );
        Ok(())
    }

    #[test]
    fn unknown_codes_and_garbage_do_not_panic() -> Result<()> {
        let wire = WireError {
            frames: vec![WireFrame {
                kind: 200,
                severity: 99,
                message: "x".into(),
            }],
        };
        let back = decode_error(&codec::encode(&wire)?);
        assert_eq!(
            (back.kind(), back.severity()),
            (Kind::Other, Severity::Unknown)
        );
        assert_eq!(decode_error(&[0xff; 7]).kind(), Kind::Invalid);
        assert_eq!(decode_error(&[]).kind(), Kind::Invalid);
        Ok(())
    }

    #[test]
    fn deep_chains_are_cut() -> Result<()> {
        let mut e = Error::other("root");
        for i in 0..100 {
            e = Error::other(format!("level {i}")).caused_by(e);
        }
        let back = decode_error(&encode_error(&e)?);
        assert_eq!(back.chain().count(), MAX_ERROR_DEPTH);
        Ok(())
    }
}
