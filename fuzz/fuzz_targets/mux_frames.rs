//! Frames of a shared stream (`wire::mux`) from the network, arriving in pieces of any size.
//! Decoding never panics, the way the bytes are cut never changes what they decode to, and
//! messages split into frames decode back to their bytes.
#![no_main]

use bigmachine_core::__internal::wire::mux::{FrameKind, Head, MuxDecoder, MuxEvent, Outgoing};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

#[path = "common/pieces.rs"]
mod common;
use common::pieces;

/// What bytes decode to: each frame's (kind, flags, id) and body, and whether decoding
/// refused the input (its error kind) or stopped between frames.
type Decoded = (
    Vec<(u8, u8, u64, Vec<u8>)>,
    Option<bigmachine_core::Kind>,
    bool,
);

/// Decodes `bytes` fed in pieces whose sizes the `cuts` give in turn.
fn decode(bytes: &[u8], cuts: &[u8]) -> Decoded {
    let mut decoder = MuxDecoder::new();
    let mut frames: Vec<(u8, u8, u64, Vec<u8>)> = Vec::new();
    for piece in pieces(bytes, cuts) {
        let mut input = Bytes::copy_from_slice(piece);
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(MuxEvent::Frame(h))) => {
                    frames.push((h.kind as u8, h.flags, h.id, Vec::new()))
                }
                Ok(Some(MuxEvent::Body(b))) => match frames.last_mut() {
                    Some(f) => f.3.extend_from_slice(&b),
                    None => panic!("a body before any frame"),
                },
                Ok(Some(MuxEvent::End)) => {}
                Ok(None) => break,
                Err(e) => return (frames, Some(e.kind()), false),
            }
        }
    }
    // A frame's end is reported even with no input left.
    while let Ok(Some(_)) = decoder.decode(&mut Bytes::new()) {}
    (frames, None, decoder.at_boundary())
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let (cuts, bytes) = rest.split_at(rest.len().min(usize::from(mode % 8)));
    // Arbitrary bytes: the cuts never change the outcome.
    assert_eq!(decode(bytes, cuts), decode(bytes, &[]));
    // A message of `bytes` (a head of up to 16 bytes, the rest as data) decodes to them.
    let (head, data) = bytes.split_at(bytes.len().min(16));
    let mut message = Outgoing::new(
        FrameKind::Reply,
        0,
        u64::from(mode),
        Head::from_slice(head),
        [Bytes::copy_from_slice(data), Bytes::new()],
    );
    let mut chunks = Vec::new();
    while message.next_frame(&mut chunks) {}
    let encoded = chunks.concat();
    let (frames, refused, whole) = decode(&encoded, cuts);
    assert_eq!(refused, None);
    assert!(whole);
    let body: Vec<u8> = frames.iter().flat_map(|f| f.3.iter().copied()).collect();
    assert_eq!(body, bytes);
});
