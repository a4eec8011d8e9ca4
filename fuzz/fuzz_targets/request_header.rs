//! A request's head from the network, read as the server reads it: the fixed header, then
//! exactly `method_len` bytes of method name, before any of the argument. Decoding never
//! panics; what decodes re-encodes to what decodes the same, announces no more argument than
//! the limit, and announces a large argument only if it awaits the server's grant.
#![no_main]

use bigmachine_core::__internal::wire::{
    MethodName, RequestHeader, GRANT_ABOVE, REQUEST_HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((fixed, rest)) = data.split_first_chunk::<REQUEST_HEADER_LEN>() else {
        return;
    };
    let mut decoded = None;
    for max_payload in [0, 1 << 20, u64::MAX] {
        if let Ok(header) = RequestHeader::decode(fixed, max_payload) {
            assert!(header.payload_len <= max_payload);
            assert!(header.payload_len <= GRANT_ABOVE || header.awaits_grant());
            assert!(header.method_len > 0);
            assert_eq!(RequestHeader::asks_grant(fixed), header.awaits_grant());
            let again = RequestHeader::decode(&header.encode(), max_payload);
            assert_eq!(again.ok(), Some(header));
            decoded = Some(header);
        }
    }
    // The name is the header's `method_len` bytes (the whole rest when no header decoded).
    let name = match decoded {
        Some(header) => match rest.get(..usize::from(header.method_len)) {
            Some(name) => name,
            None => return, // the stream would end early: refused before the name is parsed
        },
        None => rest,
    };
    if let Ok(method) = MethodName::parse(name.to_vec()) {
        assert_eq!(method.as_str().as_bytes(), name);
        assert_eq!(
            format!("{}.{}", method.service(), method.method()),
            method.as_str()
        );
        assert!(!method.service().contains('.'));
    }
});
