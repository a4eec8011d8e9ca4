//! A machine's credentials, as PEM from the file or pipe it reads them from. Parsing never
//! panics, and what parses writes back to what parses the same.
#![no_main]

use bigmachine_quic::Credentials;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(creds) = Credentials::from_pem(data) {
        let back = Credentials::from_pem(creds.to_pem().as_bytes()).expect("written PEM parses");
        assert_eq!(back.cert, creds.cert);
        assert_eq!(back.ca, creds.ca);
        assert_eq!(back.key.secret_der(), creds.key.secret_der());
    }
});
