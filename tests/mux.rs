//! Small calls on shared long-lived streams (`bigmachine_core::mux`): the frames a machine
//! accepts and sends, written and read by hand, and a long reply sharing a stream with small
//! ones.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bigmachine::testsystem::TestSystem;
use bigmachine::{service, Blob, Context, Error, Kind, Result, Services, State, B};
use bigmachine_core::__internal::wire::mux::{
    FrameHeader, FrameKind, Head, MuxDecoder, MuxEvent, Outgoing, FLAG_ACK_WANTED, MUX_PRELUDE,
};
use bigmachine_core::__internal::wire::{self, ReplyHeader, RequestHeader, Status};
use bigmachine_core::__internal::{decode, encode, type_tag};
use bigmachine_quic::{Endpoint, TransportConfig, SERVER_NAME};
use bytes::Bytes;
use common::{echo_cluster, handler_dropped, handler_started, reply_fate};

/// A connection to `machine` with a certificate of the cluster, outside its B.
async fn raw_client(b: &B, machine: &bigmachine::Machine) -> Result<(Endpoint, quinn::Connection)> {
    let authority = b.authority().ok_or_else(|| Error::other("no authority"))?;
    let endpoint = Endpoint::bind(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        &authority.issue("raw client")?,
        TransportConfig::default(),
    )?;
    let conn = endpoint.connect(machine.addr(), SERVER_NAME).await?;
    Ok((endpoint, conn))
}

/// A REQUEST frame of try `id` calling `method` with `arg`, replying `R`.
fn request<A: bigmachine::Encode, R: 'static>(id: u64, method: &str, arg: &A) -> Result<Vec<u8>> {
    request_with::<A, R>(id, method, arg, 0)
}

fn request_with<A: bigmachine::Encode, R: 'static>(
    id: u64,
    method: &str,
    arg: &A,
    flags: u8,
) -> Result<Vec<u8>> {
    let arg = encode(arg)?;
    let header = RequestHeader {
        flags,
        arg_type: A::sent_tag(),
        reply_type: type_tag::<R>(),
        payload_len: arg.len() as u64,
        call_id: u128::from(id) << 64 | 0x5eed,
        ..RequestHeader::default()
    };
    let (service, method) = method.split_once('.').ok_or_else(|| Error::other("name"))?;
    let mut head = Head::with_capacity(0);
    header.encode_head(service, method, head.buffer())?;
    Ok(frames(Outgoing::new(
        FrameKind::Request,
        0,
        id,
        head,
        [Bytes::copy_from_slice(&arg), Bytes::new()],
    )))
}

fn control(kind: FrameKind, id: u64) -> Vec<u8> {
    frames(Outgoing::control(kind, id, &[]))
}

fn frames(mut message: Outgoing) -> Vec<u8> {
    let mut out = Vec::new();
    while message.next_frame(&mut out) {}
    out.concat()
}

/// A message from the machine: its first frame's header and its whole body.
#[derive(Debug)]
struct Message {
    first: FrameHeader,
    body: Vec<u8>,
}

impl Message {
    fn reply(&self) -> Result<(Status, Vec<u8>)> {
        let head: [u8; wire::REPLY_HEADER_LEN] = self
            .body
            .get(..wire::REPLY_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| Error::other("short reply"))?;
        let header = ReplyHeader::decode(&head, u64::MAX)?;
        Ok((header.status, self.body[wire::REPLY_HEADER_LEN..].to_vec()))
    }
}

/// Reads `n` whole messages (or the stream's end: `None`) within 10 s.
async fn read_messages(
    recv: &mut quinn::RecvStream,
    decoder: &mut MuxDecoder,
    n: usize,
) -> Result<Option<Vec<Message>>> {
    let read = async {
        let mut open: HashMap<u64, Message> = HashMap::new();
        let mut current: Option<FrameHeader> = None;
        let mut done = Vec::new();
        while done.len() < n {
            let Some(chunk) = recv.read_chunk(usize::MAX, true).await.ok().flatten() else {
                return Ok(None);
            };
            let mut input = chunk.bytes;
            while let Some(event) = decoder.decode(&mut input)? {
                match event {
                    MuxEvent::Frame(h) => {
                        open.entry(h.id).or_insert(Message {
                            first: h,
                            body: Vec::new(),
                        });
                        current = Some(h);
                    }
                    MuxEvent::Body(b) => {
                        let id = current.map(|h| h.id).unwrap_or_default();
                        if let Some(m) = open.get_mut(&id) {
                            m.body.extend_from_slice(&b);
                        }
                    }
                    MuxEvent::End => {
                        let h = current.take().ok_or_else(|| Error::other("end"))?;
                        if !h.more() {
                            done.extend(open.remove(&h.id));
                        }
                    }
                }
            }
        }
        Ok::<_, Error>(Some(done))
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| Error::other("no reply within 10 s"))?
}

/// Opens a shared stream on `conn` and sends `bytes` after its prelude.
async fn open_shared(
    conn: &quinn::Connection,
    bytes: &[u8],
) -> Result<(quinn::SendStream, quinn::RecvStream)> {
    let (mut send, recv) = conn.open_bi().await?;
    let mut first = MUX_PRELUDE.to_vec();
    first.extend_from_slice(bytes);
    send.write_all(&first).await?;
    Ok((send, recv))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_share_one_stream_and_each_reply_finds_its_call() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let (_endpoint, conn) = raw_client(&b, &machines[0]).await?;
    let mut bytes = Vec::new();
    for id in 0..64u64 {
        bytes.extend(request::<String, String>(
            id,
            "Echo.echo",
            &format!("n{id}"),
        )?);
    }
    let (mut send, mut recv) = open_shared(&conn, &bytes).await?;
    let mut decoder = MuxDecoder::new();
    let replies = read_messages(&mut recv, &mut decoder, 64)
        .await?
        .ok_or_else(|| Error::other("the stream ended"))?;
    let mut seen = Vec::new();
    for m in &replies {
        assert_eq!(m.first.kind, FrameKind::Reply);
        let (status, payload) = m.reply()?;
        assert_eq!(status, Status::Ok);
        let text: String = decode(&payload)?;
        assert_eq!(text, format!("hello, n{}", m.first.id));
        seen.push(m.first.id);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..64).collect::<Vec<_>>());

    // A CANCEL reaches the method as a stopped stream would: its future is dropped.
    send.write_all(&request::<u64, ()>(100, "Echo.hang", &5001u64)?)
        .await?;
    assert!(handler_started(5001, Duration::from_secs(5)).await);
    send.write_all(&control(FrameKind::Cancel, 100)).await?;
    assert!(handler_dropped(5001, Duration::from_secs(5)).await);
    // Every try is answered, a canceled one with an ABORT: until then its caller counts it.
    let answer = read_messages(&mut recv, &mut decoder, 1)
        .await?
        .ok_or_else(|| Error::other("the stream ended"))?;
    assert_eq!(
        (answer[0].first.kind, answer[0].first.id),
        (FrameKind::Abort, 100)
    );
    let code = u32::from_le_bytes(answer[0].body.as_slice().try_into().map_err(Error::other)?);
    assert_eq!(
        wire::Reset::from_code(code.into()),
        Some(wire::Reset::Unanswered)
    );
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_ack_tells_the_method_its_reply_arrived() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let (_endpoint, conn) = raw_client(&b, &machines[0]).await?;
    let first = request::<(u64, bool), ()>(1, "Echo.deliver", &(4101u64, false))?;
    let (mut send, mut recv) = open_shared(&conn, &first).await?;
    let mut decoder = MuxDecoder::new();
    let replies = read_messages(&mut recv, &mut decoder, 1)
        .await?
        .ok_or_else(|| Error::other("the stream ended"))?;
    assert_eq!(replies[0].first.flags & FLAG_ACK_WANTED, FLAG_ACK_WANTED);
    assert_eq!(replies[0].reply()?.0, Status::Ok);
    // Not acknowledged yet: the method still waits.
    assert_eq!(reply_fate(4101, Duration::from_millis(200)).await, None);
    send.write_all(&control(FrameKind::Ack, 1)).await?;
    assert_eq!(reply_fate(4101, Duration::from_secs(5)).await, Some(true));

    // A reply never acknowledged, its stream then closed: not delivered.
    send.write_all(&request::<(u64, bool), ()>(
        2,
        "Echo.deliver",
        &(4102u64, false),
    )?)
    .await?;
    let replies = read_messages(&mut recv, &mut decoder, 1)
        .await?
        .ok_or_else(|| Error::other("the stream ended"))?;
    assert_eq!(replies[0].first.id, 2);
    send.finish()?;
    assert_eq!(reply_fate(4102, Duration::from_secs(5)).await, Some(false));
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_need_their_own_stream_are_refused_on_a_shared_one() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let (_endpoint, conn) = raw_client(&b, &machines[0]).await?;
    let mut bytes =
        request_with::<String, String>(1, "Echo.echo", &"x".to_string(), wire::FLAG_STREAM_ARG)?;
    bytes.extend(request::<String, String>(
        2,
        "Echo.nosuch",
        &"x".to_string(),
    )?);
    bytes.extend(request::<String, String>(
        3,
        "Echo.echo",
        &"ok".to_string(),
    )?);
    let (_send, mut recv) = open_shared(&conn, &bytes).await?;
    let mut decoder = MuxDecoder::new();
    let replies = read_messages(&mut recv, &mut decoder, 3)
        .await?
        .ok_or_else(|| Error::other("the stream ended"))?;
    let by_id: HashMap<u64, (Status, Vec<u8>)> = replies
        .iter()
        .map(|m| Ok((m.first.id, m.reply()?)))
        .collect::<Result<_>>()?;
    let kind = |id: u64| {
        by_id
            .get(&id)
            .map(|(s, p)| (*s, wire::decode_error(p).kind()))
    };
    assert_eq!(kind(1), Some((Status::ServerError, Kind::Invalid)));
    assert_eq!(kind(2), Some((Status::ServerError, Kind::NotSupported)));
    let (status, payload) = by_id
        .get(&3)
        .cloned()
        .ok_or_else(|| Error::other("no reply to 3"))?;
    assert_eq!(status, Status::Ok);
    assert_eq!(decode::<String>(&payload)?, "hello, ok");
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_frame_ends_its_stream_and_nothing_else() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let (_endpoint, conn) = raw_client(&b, &machines[0]).await?;
    let mut unknown_kind = control(FrameKind::Ack, 1);
    unknown_kind[0] = 0x7f;
    let duplicate = request::<u64, ()>(5, "Echo.hang", &5102u64)?;
    let reply_from_caller = frames(Outgoing::control(FrameKind::Reply, 9, &[]));
    // The try id of a call running: first the call, then the id again.
    let running = request::<u64, ()>(5, "Echo.hang", &5101u64)?;
    for (what, first, then) in [
        ("an unknown frame kind", unknown_kind, None),
        ("a try id in use", running, Some((5101, duplicate))),
        ("a reply from the caller", reply_from_caller, None),
    ] {
        let (mut send, mut recv) = open_shared(&conn, &first).await?;
        if let Some((started, bytes)) = then {
            assert!(handler_started(started, Duration::from_secs(5)).await);
            send.write_all(&bytes).await?;
        }
        // The stream ends; only the aborts of the calls it ran come before its end.
        let mut decoder = MuxDecoder::new();
        while let Some(messages) = read_messages(&mut recv, &mut decoder, 1).await? {
            assert!(
                messages.iter().all(|m| m.first.kind == FrameKind::Abort),
                "{what}: the stream goes on: {messages:?}"
            );
        }
    }
    // The call of the stream that ended was dropped with it.
    assert!(handler_dropped(5101, Duration::from_secs(5)).await);
    // The connection, the machine and the driver's calls are unharmed.
    let (_send, mut recv) = open_shared(
        &conn,
        &request::<String, String>(1, "Echo.echo", &"x".to_string())?,
    )
    .await?;
    let replies = read_messages(&mut recv, &mut MuxDecoder::new(), 1).await?;
    assert_eq!(replies.map(|r| r.len()), Some(1));
    let reply: String = machines[0].call("Echo.echo", &"y".to_string()).await?;
    assert_eq!(reply, "hello, y");
    b.shutdown().await;
    Ok(())
}

#[derive(Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Pages;

/// Set once `Pages.big` returned its reply.
static BIG_REPLIED: AtomicBool = AtomicBool::new(false);

#[service]
impl Pages {
    /// `n` bytes, noting when the method returned them.
    async fn big(&self, _ctx: &Context, n: u64) -> Result<Blob> {
        BIG_REPLIED.store(true, Ordering::SeqCst);
        Ok(Blob::from(Bytes::from(vec![1u8; n as usize])))
    }

    async fn small(&self, _ctx: &Context, n: u64) -> Result<u64> {
        Ok(n + 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reply_holds_up_the_small_calls_sharing_its_stream_by_a_chunk_at_most() -> Result<()>
{
    let b = B::new(TestSystem::new())?;
    let machines = b.start(1, Services::new().with("Pages", Pages)).await?;
    let machine = &machines[0];
    assert_eq!(machine.wait(State::Running).await, State::Running);
    let done = Arc::new(AtomicBool::new(false));
    let big = {
        let machine = machine.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let reply: Result<Blob> = machine.call("Pages.big", &(256u64 << 20)).await;
            done.store(true, Ordering::SeqCst);
            reply.map(|r| r.len())
        })
    };
    // Once the long reply is on its way, small calls on both shared streams get through
    // while it is still arriving.
    let on_its_way = common::eventually(Duration::from_secs(10), || {
        BIG_REPLIED.load(Ordering::SeqCst)
    })
    .await;
    assert!(on_its_way);
    for n in 0..8u64 {
        let reply: u64 = machine.call("Pages.small", &n).await?;
        assert_eq!(reply, n + 1);
        assert!(
            !done.load(Ordering::SeqCst),
            "small call {n} waited for the whole long reply"
        );
    }
    let len = big.await.map_err(Error::other)??;
    assert_eq!(len, 256 << 20);
    b.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_long_calls_than_the_shared_streams_take_hold_up_no_other_call() -> Result<()> {
    let (b, machines) = echo_cluster(TestSystem::new(), 1).await?;
    let machine = &machines[0];
    // More hanging calls than the shared streams' places (2 × 128): the rest take streams
    // of their own.
    let ids: Vec<u64> = (6000..6300).collect();
    let hangs: Vec<_> = ids
        .iter()
        .map(|&id| {
            let machine = machine.clone();
            tokio::spawn(async move { machine.call::<u64, ()>("Echo.hang", &id).await })
        })
        .collect();
    let all_started = common::eventually(Duration::from_secs(10), || {
        common::hangs()
            .borrow()
            .started
            .is_superset(&ids.iter().copied().collect())
    })
    .await;
    assert!(all_started, "not every hanging call reached the machine");
    let reply: String = machine
        .call("Echo.echo", &"through".to_string())
        .timeout(Duration::from_secs(5))
        .await?;
    assert_eq!(reply, "hello, through");
    for hang in hangs {
        hang.abort();
    }
    b.shutdown().await;
    Ok(())
}
