//! The archived arguments and replies of the Supervisor's methods, from the network: validation
//! refuses what is not an archive of the type, never panics, and what it accepts survives
//! another trip unchanged.
#![no_main]

use bigmachine_core::__internal::{decode, encode, Expvar, FetchBinary, KeepaliveReply};
use bigmachine_core::{DiskInfo, Info, LoadInfo, MemInfo};
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(bytes: &[u8])
where
    T: bigmachine_core::Decode + bigmachine_core::Encode + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = decode::<T>(bytes) {
        let archive = encode(&value).expect("a decoded value encodes");
        assert_eq!(decode::<T>(&archive).ok(), Some(value));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 10 {
        0 => round_trip::<Info>(bytes),
        1 => round_trip::<MemInfo>(bytes),
        2 => round_trip::<DiskInfo>(bytes),
        3 => {
            // Load averages are floats: NaN is not equal to itself, so compare bits.
            if let Ok(l) = decode::<LoadInfo>(bytes) {
                let back = decode::<LoadInfo>(&encode(&l).expect("encodes")).expect("decodes");
                let bits = |l: &LoadInfo| [l.one.to_bits(), l.five.to_bits(), l.fifteen.to_bits()];
                assert_eq!(bits(&back), bits(&l));
            }
        }
        4 => round_trip::<FetchBinary>(bytes),
        5 => round_trip::<KeepaliveReply>(bytes),
        6 => round_trip::<Vec<Expvar>>(bytes),
        7 => round_trip::<Vec<String>>(bytes),
        8 => round_trip::<String>(bytes),
        _ => round_trip::<u64>(bytes),
    }
});
