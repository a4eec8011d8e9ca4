//! Writes the seed corpus of every fuzz target (`corpus/<target>/`): valid inputs of each kind,
//! so the fuzzer starts from the shapes the decoders accept. Run from `fuzz/`:
//! `cargo run --example seeds`.

use std::path::Path;

use bigmachine_core::__internal::wire::{
    data_header, encode_error, end_err, end_ok, ReplyHeader, RequestHeader, Status,
    FLAG_AWAIT_GRANT, FLAG_EXACTLY_ONCE, FLAG_STREAM_ARG,
};
use bigmachine_core::__internal::{encode, Expvar, FetchBinary, KeepaliveReply, ServiceSpec};
use bigmachine_core::{Error, Info, Kind, LoadInfo, MemInfo};
use bigmachine_quic::Authority;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(name), bytes).expect("seed written");
}

fn tagged(which: u8, archive: &[u8]) -> Vec<u8> {
    let mut v = vec![which];
    v.extend_from_slice(archive);
    v
}

fn main() {
    let mut head = Vec::new();
    RequestHeader {
        flags: FLAG_STREAM_ARG | FLAG_EXACTLY_ONCE,
        timeout_us: 2_000_000,
        arg_type: 7,
        reply_type: 9,
        payload_len: 64,
        call_id: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        ..Default::default()
    }
    .encode_head("Supervisor", "ping", &mut head)
    .expect("head");
    write("request_header", "ping", &head);
    let mut plain = Vec::new();
    RequestHeader::default()
        .encode_head("Echo", "echo", &mut plain)
        .expect("head");
    write("request_header", "echo", &plain);
    let mut large = Vec::new();
    RequestHeader {
        flags: FLAG_AWAIT_GRANT,
        payload_len: 64 << 20,
        ..Default::default()
    }
    .encode_head("Echo", "len", &mut large)
    .expect("head");
    write("request_header", "large", &large);

    for (name, status) in [
        ("ok", Status::Ok),
        ("error", Status::ServerError),
        ("stream", Status::Stream),
    ] {
        let h = ReplyHeader {
            status,
            payload_len: 16,
        };
        write("reply_header", name, &h.encode());
    }

    let err = Error::new(Kind::Remote, "Echo.fail on m1")
        .caused_by(Error::fatal(Kind::Precondition, "no such widget"));
    let mut stream = vec![3u8, 1, 2, 3];
    for chunk in [&b"hello"[..], b", ", b"world"] {
        stream.extend_from_slice(&data_header(chunk.len()));
        stream.extend_from_slice(chunk);
    }
    let mut ok = stream.clone();
    ok.extend_from_slice(&end_ok());
    write("stream_frames", "ok", &ok);
    let mut failed = stream;
    failed.extend_from_slice(&end_err(&err));
    write("stream_frames", "error", &failed);

    write(
        "error_chain",
        "remote",
        &encode_error(&err).expect("archive"),
    );
    write(
        "error_chain",
        "one",
        &encode_error(&Error::other("x")).expect("archive"),
    );

    let info = Info {
        os: "linux".into(),
        arch: "x86_64".into(),
        pid: 42,
        maxprocs: 2,
        digest: "ab".repeat(32),
        incarnation: 7,
    };
    let seeds: Vec<(u8, Vec<u8>)> = vec![
        (0, encode(&info).expect("info").to_vec()),
        (
            1,
            encode(&MemInfo {
                total: 1 << 34,
                available: 1 << 33,
                process_rss: 1 << 20,
            })
            .expect("mem")
            .to_vec(),
        ),
        (
            3,
            encode(&LoadInfo {
                one: 0.5,
                five: 1.0,
                fifteen: 2.0,
            })
            .expect("load")
            .to_vec(),
        ),
        (
            4,
            encode(&FetchBinary {
                peer: "127.0.0.1:4000".into(),
                digest: "cd".repeat(32),
            })
            .expect("fetch")
            .to_vec(),
        ),
        (
            5,
            encode(&KeepaliveReply { next_ms: 10_000 })
                .expect("keepalive")
                .to_vec(),
        ),
        (
            6,
            encode(&vec![Expvar {
                name: "pid".into(),
                value: "42".into(),
            }])
            .expect("expvars")
            .to_vec(),
        ),
        (
            7,
            encode(&vec!["A=1".to_string(), "B=2".to_string()])
                .expect("env")
                .to_vec(),
        ),
    ];
    for (which, archive) in seeds {
        write(
            "supervisor_payloads",
            &format!("type-{which}"),
            &tagged(which, &archive),
        );
    }

    let spec = ServiceSpec {
        name: "Echo".into(),
        type_name: "app::Echo".into(),
        value: vec![1, 2, 3, 4],
    };
    write("service_spec", "echo", &encode(&spec).expect("spec"));

    let authority = Authority::new().expect("authority");
    let creds = authority.issue("seed machine").expect("credentials");
    write("credentials_pem", "machine", creds.to_pem().as_bytes());
}
