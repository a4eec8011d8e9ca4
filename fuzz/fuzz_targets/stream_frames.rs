//! Reply-stream frames from the network, arriving in pieces of any size. Decoding never panics,
//! the way the bytes are cut never changes what they decode to, and a stream encoded from data
//! decodes back to that data.
#![no_main]

use bigmachine_core::__internal::wire::{data_header, end_ok, split_data, Frame, FrameDecoder};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

#[path = "common/pieces.rs"]
mod common;
use common::pieces;

/// How a stream ended: its end frame (the kinds of the error's chain, none for success; an
/// error's text can hold addresses, from validation errors), or a decoding error (its kind), or
/// no end at all (the input stopped first).
#[derive(Debug, PartialEq)]
enum End {
    Frame(Vec<bigmachine_core::Kind>),
    Refused(bigmachine_core::Kind),
    Cut,
}

/// What a stream decodes to: its data, and how it ended.
fn decode(bytes: &[u8], cuts: &[u8]) -> (Vec<u8>, End) {
    let mut decoder = FrameDecoder::new();
    let mut data = Vec::new();
    let mut input_pieces = pieces(bytes, cuts);
    while let Some(piece) = input_pieces.next() {
        let mut input = Bytes::copy_from_slice(piece);
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(Frame::Data(d))) => data.extend_from_slice(&d),
                Ok(Some(Frame::End(end))) => {
                    // Bytes after the end are refused.
                    let after: Vec<u8> = input
                        .iter()
                        .copied()
                        .chain(input_pieces.flatten().copied())
                        .collect();
                    if !after.is_empty() {
                        assert!(decoder.decode(&mut Bytes::from(after)).is_err());
                    }
                    let kinds = end.map(|e| e.chain().map(|c| c.kind()).collect());
                    return (data, End::Frame(kinds.unwrap_or_default()));
                }
                Ok(None) => break,
                Err(e) => return (data, End::Refused(e.kind())),
            }
        }
    }
    assert!(decoder.finish().is_err(), "no end, yet finished cleanly");
    (data, End::Cut)
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let (cuts, bytes) = rest.split_at(rest.len().min(usize::from(mode % 8)));
    // Arbitrary bytes: the cuts never change the outcome.
    assert_eq!(decode(bytes, cuts), decode(bytes, &[]));
    // A stream made of `bytes` as chunks (cut where the cut bytes say) decodes to `bytes`.
    let mut encoded = Vec::new();
    for chunk in pieces(bytes, cuts) {
        for piece in split_data(Bytes::copy_from_slice(chunk)) {
            encoded.extend_from_slice(&data_header(piece.len()));
            encoded.extend_from_slice(&piece);
        }
    }
    encoded.extend_from_slice(&end_ok());
    assert_eq!(
        decode(&encoded, cuts),
        (bytes.to_vec(), End::Frame(Vec::new()))
    );
});
