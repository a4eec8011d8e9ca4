//! A service as the driver sends it to a machine (`Supervisor.register`): validation refuses
//! what is not a service spec, never panics, and what it accepts survives another trip.
#![no_main]

use bigmachine_core::__internal::{decode, encode, ServiceSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = decode::<ServiceSpec>(data) {
        let back = decode::<ServiceSpec>(&encode(&spec).expect("encodes")).expect("decodes");
        assert_eq!(
            (back.name, back.type_name, back.value),
            (spec.name, spec.type_name, spec.value)
        );
    }
});
