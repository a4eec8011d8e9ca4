//! A reply's 16-byte header from the network. Decoding never panics; what decodes re-encodes to
//! what decodes the same.
#![no_main]

use bigmachine_core::__internal::wire::{ReplyHeader, REPLY_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((fixed, _)) = data.split_first_chunk::<REPLY_HEADER_LEN>() else {
        return;
    };
    for max_payload in [0, 1 << 20, u64::MAX] {
        if let Ok(header) = ReplyHeader::decode(fixed, max_payload) {
            assert!(header.payload_len <= max_payload);
            let again = ReplyHeader::decode(&header.encode(), max_payload);
            assert_eq!(again.ok(), Some(header));
        }
    }
});
