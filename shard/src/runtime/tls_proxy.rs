//! The TLS listener's connection path: handshake on the accepting shard, then a proxy to
//! a UNIX socketpair whose other end is served as an ordinary connection.
//!
//! A plain-TCP connection reaches the shard that owns its client id by moving its fd over
//! the mesh (see the parent module). A TLS connection cannot move that way: its state
//! (keys, sequence numbers, buffered records) lives in this process's memory, not in the
//! socket. So the shard that accepted it terminates TLS and copies the plaintext through
//! a socketpair:
//!
//! ```text
//! client ==TLS/TCP== [accepting shard: handshake, proxy task] ==AF_UNIX pair== [plain path]
//! ```
//!
//! The far end of the pair goes to `accept_connection` exactly as an accepted TCP socket
//! does: CONNECT within the connect timeout, authentication, then `run_connection` here
//! or a hand-off of *that* fd to the owner shard. Nothing on the plain path knows about
//! TLS; what only the TLS side knows (the client's address, its certificate's user name)
//! goes along as an [`Origin`]. glommio's `TcpStream` serves the AF_UNIX end: its reads,
//! writes and shutdown are `recv`/`send`/`shutdown`, which work on any stream socket
//! (`set_nodelay` fails and is ignored; `peer_addr` fails, hence `Origin::peer`).
//!
//! **Closing.** The client ending its side (close_notify or EOF) half-closes the pair, so
//! the plain path reads EOF and ends the connection as it does for TCP. The plain path
//! closing its end (a DISCONNECT, a protocol error, a takeover, keep-alive, shutdown)
//! makes the proxy send close_notify and FIN, and stop reading the client. Backpressure
//! is kept: the proxy writes what it read before it reads again, so a client that does
//! not read fills the socket buffers and then the connection's outbound bound, as on TCP.
//!
//! **Cost.** Per TLS connection: two more fds, one proxy task, rustls' buffers, and per
//! direction a buffer only while a write is pending (reads go through the shard's one
//! scratch buffer). Per message: one more `send` and `recv` through the pair and a copy
//! each way, on top of the encryption. Measured (release build, one shard, QoS 1, broker
//! CPU per message): with 64 B payloads TCP 1.8 µs, TLS 2.8 µs of which the record layer
//! 0.8 µs, so the proxy ~0.3 µs; with 1 KiB 2.3 / 4.8 / 1.4, proxy ~1.1 µs; with 16 KiB
//! 13.8 / 36.5 / 19.7, proxy ~3 µs. `README.md`'s TLS section has the table and the
//! command (an ignored test in `broker/tests/tls.rs`).
//!
//! **Later.** kTLS (rustls' `dangerous_extract_secrets`, then `setsockopt(TCP_ULP,
//! "tls")`) would put the record layer in the kernel: the fd then carries the state and
//! moves to the owner like a plain one, with no proxy. Short of that, the rustls
//! `ServerConnection` (which is `Send`) could travel over the mesh with the fd and the
//! owner could serve the TLS stream itself, which needs `run_connection` to take any
//! stream.

use super::{accept_connection, bind_listener, Origin, RuntimeConfig, Shard, StartError};
use crate::access::Admitted;
use crate::tls::{CertificateUser, TlsServer};
use bytes::BytesMut;
use cutie_codec::{ConnAck, Connect, ConnectReturnCode, Packet};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::LocalReceiver;
use glommio::net::{TcpStream, UnixStream};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A proxy's buffer is given back when an idle connection would otherwise keep more
/// than this.
const PENDING_BYTES_KEPT_MAX: usize = 4096;

/// How long the proxy tries to send close_notify to a client that does not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stopping shard waits for its TLS connections to say close_notify.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Binds one SO_REUSEPORT listener per shard on `config.tls`'s address (port 0: the
/// first gets a port and the others bind it). `None`s and no address without TLS.
pub(super) fn bind_listeners(
    config: &RuntimeConfig,
) -> Result<(Vec<Option<OwnedFd>>, Option<SocketAddr>), StartError> {
    let n = usize::from(config.shards);
    let Some(tls) = &config.tls else {
        return Ok(((0..n).map(|_| None).collect(), None));
    };
    let mut addr = tls.listen;
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = bind_listener(addr).map_err(|source| StartError::Bind { addr, source })?;
        if addr.port() == 0 {
            addr = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| StartError::Bind {
                    addr: tls.listen,
                    source: io::Error::other("no local address after bind"),
                })?;
        }
        listeners.push(Some(OwnedFd::from(socket)));
    }
    Ok((listeners, Some(addr)))
}

/// Accepts TLS connections until `stop`, then gives open ones a moment to close.
pub(super) async fn accept_loop(
    shard: Rc<Shard>,
    listener_fd: OwnedFd,
    server: Arc<TlsServer>,
    stop: LocalReceiver<()>,
) {
    let live = Rc::new(Cell::new(0usize));
    super::accept_loop(&shard, listener_fd, &stop, "TLS", |shard, stream| {
        let guard = LiveGuard::new(&live);
        glommio::spawn_local(serve(shard.clone(), stream, server.clone(), guard)).detach();
    })
    .await;
    // The plain side is closing every connection; their proxies end once they have
    // passed that on (close_notify).
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while live.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// Counts a live TLS connection of this shard while it exists.
struct LiveGuard(Rc<Cell<usize>>);

impl LiveGuard {
    fn new(live: &Rc<Cell<usize>>) -> LiveGuard {
        live.set(live.get() + 1);
        LiveGuard(live.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// One TLS connection: handshake (within the connect timeout), then the plain path on
/// one end of a socketpair and the proxy on the other.
async fn serve(shard: Rc<Shard>, stream: TcpStream, server: Arc<TlsServer>, _live: LiveGuard) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    // A banned address gets no handshake (the expensive part), and a failed handshake
    // counts toward a ban like a malformed packet.
    let bans = &shard.config.access.bans;
    if peer.is_some_and(|p| bans.is_banned(p.ip(), std::time::Instant::now())) {
        shard
            .core
            .borrow_mut()
            .stats
            .connections_refused_banned_total += 1;
        tracing::debug!(shard = %shard.id, ?peer, "TLS connection from a banned address refused");
        return;
    }
    let failed = || {
        if let Some(peer) = peer {
            bans.record_failure(peer.ip(), std::time::Instant::now());
        }
    };
    let acceptor = futures_rustls::TlsAcceptor::from(server.config());
    let stream = Counted {
        inner: stream,
        shard: shard.clone(),
    };
    let timeout = shard.config.connect_timeout;
    let handshake =
        futures_lite::future::or(async { Some(acceptor.accept(stream).await) }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
    let tls = match handshake {
        Some(Ok(tls)) => tls,
        Some(Err(error)) => {
            shard.core.borrow_mut().stats.tls_handshake_failures_total += 1;
            tracing::debug!(shard = %shard.id, ?peer, %error, "TLS handshake failed");
            failed();
            return;
        }
        None => {
            shard.core.borrow_mut().stats.tls_handshake_failures_total += 1;
            tracing::debug!(shard = %shard.id, ?peer, "no TLS handshake within the connect timeout");
            failed();
            return;
        }
    };
    shard.core.borrow_mut().stats.tls_handshakes_total += 1;
    let certificate_user = server
        .use_identity_as_username()
        .then(|| CertificateUser::of(tls.get_ref().1));
    tracing::trace!(shard = %shard.id, ?peer, ?certificate_user, "TLS handshake done");

    // std creates the pair with SOCK_CLOEXEC; glommio reads and writes with MSG_DONTWAIT.
    let (plain, proxy_end) = match std::os::unix::net::UnixStream::pair() {
        Ok(pair) => pair,
        Err(error) => {
            shard.core.borrow_mut().stats.tls_connection_errors_total += 1;
            tracing::warn!(shard = %shard.id, %error, "cannot create a socketpair for a TLS connection");
            return;
        }
    };
    // SAFETY: fresh fds that we own, each moved into its glommio wrapper.
    let plain = unsafe { TcpStream::from_raw_fd(plain.into_raw_fd()) };
    // SAFETY: as above.
    let proxy_end = unsafe { UnixStream::from_raw_fd(proxy_end.into_raw_fd()) };
    let origin = Origin {
        peer,
        certificate_user,
    };
    glommio::spawn_local(accept_connection(shard.clone(), plain, origin)).detach();
    proxy(&shard, tls, proxy_end).await;
}

/// Applies `use_identity_as_username` to a CONNECT: `Some(true)`: the certificate named
/// the user, who is authenticated by it (user name set, password cleared: as in
/// Mosquitto, no password is checked); `Some(false)`: not in use; `None`: the certificate
/// names no one, CONNACK 4 was sent and the connection is to be dropped.
pub(super) async fn apply_certificate_user(
    shard: &Shard,
    stream: &mut TcpStream,
    connect: &mut Connect,
    certificate_user: Option<CertificateUser>,
    admitted: Option<&Admitted>,
) -> Option<bool> {
    match certificate_user {
        None => Some(false),
        Some(CertificateUser::Name(name)) => {
            connect.username = Some(name);
            connect.password = None;
            Some(true)
        }
        Some(CertificateUser::Missing) => {
            tracing::debug!(
                shard = %shard.id,
                client_id = %connect.client_id,
                "client certificate has no usable common name (tls.use_identity_as_username)"
            );
            {
                let stats = &mut shard.core.borrow_mut().stats;
                stats.connections_refused_total += 1;
                stats.auth_failures_total += 1;
            }
            if let Some(admitted) = admitted {
                admitted.record_failure();
            }
            let mut out = BytesMut::new();
            Packet::ConnAck(ConnAck {
                session_present: false,
                return_code: ConnectReturnCode::BadUserNameOrPassword,
            })
            .encode(&mut out);
            let _ = stream.write_all(&out).await;
            let _ = stream.flush().await;
            None
        }
    }
}

/// Copies both ways until the plain side has closed its end (see the module docs).
async fn proxy(shard: &Shard, tls: futures_rustls::server::TlsStream<Counted>, plain: UnixStream) {
    let (mut tls_reader, mut tls_writer) = futures_lite::io::split(tls);
    let (mut plain_reader, mut plain_writer) = futures_lite::io::split(plain);
    let inbound = async {
        let mut pending = BytesMut::new();
        let result = copy(
            &shard.scratch,
            &mut tls_reader,
            &mut plain_writer,
            &mut pending,
        )
        .await;
        // EOF for the plain side: it ends the connection as for a TCP client.
        let _ = plain_writer.close().await;
        match result {
            // Most clients close without close_notify: an end, not an error.
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            other => other,
        }
    };
    let outbound = async {
        let mut pending = BytesMut::new();
        let result = copy(
            &shard.scratch,
            &mut plain_reader,
            &mut tls_writer,
            &mut pending,
        )
        .await;
        // close_notify and FIN, unless the client has stopped reading.
        let _ = futures_lite::future::or(
            async {
                let _ = tls_writer.close().await;
            },
            glommio::timer::sleep(CLOSE_TIMEOUT),
        )
        .await;
        result
    };
    // The plain side closing its end is the end of the connection: stop reading the
    // client then. The client closing first only ends the inbound copy; the plain side
    // then closes its end and the outbound copy ends too.
    let mut inbound = std::pin::pin!(inbound);
    let mut outbound = std::pin::pin!(outbound);
    let mut inbound_result: Option<io::Result<()>> = None;
    let outbound_result = futures_lite::future::poll_fn(|cx| {
        if inbound_result.is_none() {
            if let Poll::Ready(result) = inbound.as_mut().poll(cx) {
                inbound_result = Some(result);
            }
        }
        outbound.as_mut().poll(cx)
    })
    .await;
    for result in [inbound_result, Some(outbound_result)]
        .into_iter()
        .flatten()
    {
        if let Err(error) = result {
            shard.core.borrow_mut().stats.tls_connection_errors_total += 1;
            tracing::debug!(shard = %shard.id, %error, "TLS connection error");
            break;
        }
    }
}

/// Copies `from` to `to` until `from` ends. A read goes through the shard's scratch
/// buffer; what it gave is written and flushed before the next read (backpressure), and
/// `pending` holds it only meanwhile.
async fn copy<R, W>(
    scratch: &RefCell<Box<[u8]>>,
    from: &mut R,
    to: &mut W,
    pending: &mut BytesMut,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let read = futures_lite::future::poll_fn(|cx| {
            let mut scratch = scratch.borrow_mut();
            match Pin::new(&mut *from).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(n)) => {
                    pending.extend_from_slice(&scratch[..n]);
                    Poll::Ready(Ok(n))
                }
                other => other,
            }
        })
        .await?;
        if read == 0 {
            return Ok(());
        }
        to.write_all(pending).await?;
        to.flush().await?;
        pending.clear();
        if pending.capacity() > PENDING_BYTES_KEPT_MAX {
            *pending = BytesMut::new();
        }
        // A client whose data is always ready must not keep the shard to itself.
        futures_lite::future::yield_now().await;
    }
}

/// The TLS connection's TCP socket, counting the bytes that cross it (handshakes and
/// record overhead included) into the shard's stats.
struct Counted {
    inner: TcpStream,
    shard: Rc<Shard>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.shard.core.borrow_mut().stats.tls_received_bytes_total += n as u64;
        }
        result
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            self.shard.core.borrow_mut().stats.tls_sent_bytes_total += n as u64;
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
