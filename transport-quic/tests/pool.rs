//! Endpoints and pools: mutual TLS, several connections per address, reconnection after loss.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bigmachine_quic::{Authority, Endpoint, Pool, Result, TransportConfig, SERVER_NAME};

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// A server that echoes each stream and closes every connection it is sent `close` on.
fn echo_server(endpoint: Endpoint) {
    tokio::spawn(async move {
        while let Some(conn) = endpoint.accept().await {
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let Ok(msg) = recv.read_to_end(1024).await else {
                        return;
                    };
                    if msg == b"close" {
                        conn.close(7u32.into(), b"asked to close");
                        return;
                    }
                    let _ = send.write_all(&msg).await;
                    let _ = send.finish();
                }
            });
        }
    });
}

async fn echo(conn: &quinn::Connection, msg: &[u8]) -> Option<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    send.write_all(msg).await.ok()?;
    send.finish().ok()?;
    recv.read_to_end(1024).await.ok()
}

#[tokio::test]
async fn pool_spreads_over_its_connections_and_reconnects_after_loss() -> Result<()> {
    let ca = Authority::new()?;
    let server = Endpoint::bind(loopback(), &ca.issue("server")?, TransportConfig::default())?;
    let addr = server.local_addr()?;
    echo_server(server);
    let mut config = TransportConfig::default();
    config.pool_size = 3;
    let client = Endpoint::bind(loopback(), &ca.issue("client")?, config)?;
    let pool = Pool::new(client.clone(), addr, SERVER_NAME);
    assert_eq!(pool.open_connections(), 0, "connections open lazily");

    let mut ids = std::collections::HashSet::new();
    for _ in 0..6 {
        let conn = pool.get().await?;
        assert_eq!(echo(&conn, b"hi").await.as_deref(), Some(&b"hi"[..]));
        ids.insert(conn.stable_id());
    }
    assert_eq!(ids.len(), 3, "six gets spread over three connections");
    assert_eq!(pool.open_connections(), 3);

    // The server closes one connection; the pool replaces it on next use.
    let victim = pool.get().await?;
    assert_eq!(echo(&victim, b"close").await, None);
    tokio::time::timeout(Duration::from_secs(2), victim.closed())
        .await
        .map_err(|_| std::io::Error::other("connection not closed"))?;
    for _ in 0..3 {
        let conn = pool.get().await?;
        assert!(conn.close_reason().is_none());
        assert_eq!(echo(&conn, b"again").await.as_deref(), Some(&b"again"[..]));
    }
    assert_eq!(pool.open_connections(), 3);

    pool.close("done");
    assert_eq!(pool.open_connections(), 0);
    Ok(())
}

#[tokio::test]
async fn strangers_cannot_connect_either_way() -> Result<()> {
    let ours = Authority::new()?;
    let theirs = Authority::new()?;
    let server = Endpoint::bind(
        loopback(),
        &ours.issue("server")?,
        TransportConfig::default(),
    )?;
    let addr = server.local_addr()?;
    echo_server(server);

    // A client of another cluster: it rejects our server's certificate.
    let stranger = Endpoint::bind(
        loopback(),
        &theirs.issue("stranger")?,
        TransportConfig::default(),
    )?;
    let err = stranger.connect(addr, SERVER_NAME).await.err();
    assert!(
        err.as_ref().is_some_and(|e| e.is_permanent()),
        "stranger connected: {err:?}"
    );

    // A member of our cluster still gets through.
    let member = Endpoint::bind(
        loopback(),
        &ours.issue("member")?,
        TransportConfig::default(),
    )?;
    let conn = member.connect(addr, SERVER_NAME).await?;
    assert_eq!(echo(&conn, b"ok").await.as_deref(), Some(&b"ok"[..]));
    Ok(())
}

#[tokio::test]
async fn a_machine_is_known_by_its_name_not_only_its_address() -> Result<()> {
    let ca = Authority::new()?;
    // The machine at this address now is i-b; the client expects i-a, which used to be there.
    let server = Endpoint::bind(loopback(), &ca.issue("i-b")?, TransportConfig::default())?;
    let addr = server.local_addr()?;
    echo_server(server);
    let client = Endpoint::bind(loopback(), &ca.issue("driver")?, TransportConfig::default())?;
    let err = client.connect(addr, "i-a").await.err();
    assert!(
        err.as_ref().is_some_and(|e| e.is_permanent()),
        "took i-b for i-a: {err:?}"
    );
    let conn = client.connect(addr, "i-b").await?;
    assert_eq!(echo(&conn, b"b").await.as_deref(), Some(&b"b"[..]));
    let conn = client.connect(addr, SERVER_NAME).await?;
    assert_eq!(echo(&conn, b"any").await.as_deref(), Some(&b"any"[..]));
    Ok(())
}

#[tokio::test]
async fn a_shut_pool_keeps_no_connection_even_one_opening_as_it_shuts() -> Result<()> {
    let ca = Authority::new()?;
    let server = Endpoint::bind(loopback(), &ca.issue("server")?, TransportConfig::default())?;
    let addr = server.local_addr()?;
    echo_server(server);
    let mut config = TransportConfig::default();
    config.pool_size = 1;
    let client = Endpoint::bind(loopback(), &ca.issue("client")?, config)?;
    let pool = std::sync::Arc::new(Pool::new(client, addr, SERVER_NAME));
    // A get that is connecting when the pool is shut: whichever wins, no connection stays.
    let connecting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await }
    });
    tokio::task::yield_now().await;
    pool.shut("machine stopped");
    let got = connecting
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Ok(conn) = got {
        // Handed out before the shut: the shut closed it.
        tokio::time::timeout(Duration::from_secs(2), conn.closed())
            .await
            .map_err(|_| std::io::Error::other("connection outlived the shut"))?;
    }
    assert_eq!(pool.open_connections(), 0);
    let later = pool.get().await;
    assert!(
        matches!(later, Err(bigmachine_quic::Error::Shut(a)) if a == addr),
        "{later:?}"
    );
    Ok(())
}
