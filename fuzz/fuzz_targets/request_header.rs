//! A request's head from the network: the fixed header, then the method name. Decoding never
//! panics; what decodes re-encodes to what decodes the same.
#![no_main]

use bigmachine_core::__internal::wire::{MethodName, RequestHeader, REQUEST_HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((fixed, name)) = data.split_first_chunk::<REQUEST_HEADER_LEN>() else {
        return;
    };
    for max_payload in [0, 1 << 20, u64::MAX] {
        if let Ok(header) = RequestHeader::decode(fixed, max_payload) {
            assert!(header.payload_len <= max_payload);
            let again = RequestHeader::decode(&header.encode(), max_payload);
            assert_eq!(again.ok(), Some(header));
        }
    }
    if let Ok(method) = MethodName::parse(name.to_vec()) {
        assert_eq!(method.as_str().as_bytes(), name);
        assert_eq!(
            format!("{}.{}", method.service(), method.method()),
            method.as_str()
        );
        assert!(!method.service().contains('.'));
    }
});
