//! Error archives from the network. Decoding never panics (garbage is an Invalid error), and a
//! decoded chain survives another trip over the wire unchanged.
#![no_main]

use bigmachine_core::__internal::wire::{decode_error, encode_error, MAX_ERROR_DEPTH};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let err = decode_error(data);
    assert!(err.chain().count() <= MAX_ERROR_DEPTH.max(2));
    let archive = encode_error(&err).expect("a decoded error encodes");
    assert_eq!(decode_error(&archive), err);
});
