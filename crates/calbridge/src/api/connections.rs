//! The API's HTTP connections, counted: the count is shown in `/metrics`, and after a burst of
//! connections (thousands of clients at once, a console reconnecting in a loop) the heap they
//! used is given back to the operating system ([`trim_after_bursts`]); glibc's allocator
//! would otherwise keep it for good (measured: 3,000 connections at once took RSS from 35 to
//! 110 MB, and five such rounds to 144 MB).
//!
//! There is deliberately no cap on connections: axum's `serve` has no header-read timeout,
//! so a cap would let a few hundred idle connections lock everyone else out. Live streams,
//! which hold memory for as long as they last, are capped (`[api] max_streams`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Open connections now, and the most since the memory was last trimmed.
#[derive(Default)]
pub struct ConnectionStats {
    pub open: AtomicUsize,
    peak: AtomicUsize,
}

/// A TCP listener that counts its open connections.
pub struct CountingListener {
    inner: TcpListener,
    stats: Arc<ConnectionStats>,
}

impl CountingListener {
    pub fn new(inner: TcpListener, stats: Arc<ConnectionStats>) -> Self {
        CountingListener { inner, stats }
    }
}

impl axum::serve::Listener for CountingListener {
    type Io = CountedConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CountedConnection, SocketAddr) {
        let (io, address) = axum::serve::Listener::accept(&mut self.inner).await;
        let open = self.stats.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.peak.fetch_max(open, Ordering::Relaxed);
        (
            CountedConnection {
                io,
                stats: self.stats.clone(),
            },
            address,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection, counted until it is dropped.
pub struct CountedConnection {
    io: TcpStream,
    stats: Arc<ConnectionStats>,
}

impl Drop for CountedConnection {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for CountedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Connections above this many at once count as a burst, whose memory is given back after.
const BURST: usize = 64;

/// Every 10 s: when a burst of connections has passed (the peak since the last trim was
/// above [`BURST`] and fewer than half of it are still open), the freed heap is given back
/// to the operating system, which glibc's allocator would otherwise keep for good.
pub async fn trim_after_bursts(stats: Arc<ConnectionStats>, shutdown: crate::shutdown::Shutdown) {
    let mut every = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = every.tick() => {}
        }
        let peak = stats.peak.load(Ordering::Relaxed);
        let open = stats.open.load(Ordering::Relaxed);
        if peak > BURST && open * 2 < peak {
            stats.peak.store(open, Ordering::Relaxed);
            tokio::task::spawn_blocking(crate::memory::release_free_memory);
        }
    }
}
