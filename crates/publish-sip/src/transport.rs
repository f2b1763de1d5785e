//! Non-INVITE client transactions (RFC 3261 section 17.1.2) over UDP or TCP.
//!
//! One socket (UDP) or one connection (TCP) serves every transaction; a reader task hands each
//! response to the transaction waiting on its Via branch. Over UDP a request is retransmitted
//! at T1, 2·T1, 4·T1 … capped at T2 (8·T1, i.e. 4 s with the default T1 of 500 ms) and given up
//! after the transaction timeout (64·T1 = 32 s by default). Over TCP nothing is retransmitted;
//! a broken connection fails its transactions at once and the next request reconnects.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::config::Transport;
use crate::message::{framed_len, parse_message, SipMessage, SipRequest, SipResponse};
use crate::SipError;

struct Waiting {
    responses: mpsc::UnboundedSender<SipResponse>,
    /// The TCP connection the request went out on (0 for UDP), so that a closed connection
    /// fails exactly its own transactions.
    connection: u64,
}

type PendingMap = Arc<Mutex<HashMap<String, Waiting>>>;

pub(crate) struct SipTransport {
    kind: Transport,
    server: SocketAddr,
    bind: SocketAddr,
    /// The address put into Via and Contact; for TCP it changes with each connection.
    local: Mutex<SocketAddr>,
    pending: PendingMap,
    udp: Option<Arc<UdpSocket>>,
    tcp: tokio::sync::Mutex<Option<(u64, OwnedWriteHalf)>>,
    next_connection: AtomicU64,
    /// The id of the last TCP connection whose reader saw it close.
    closed_connection: Arc<AtomicU64>,
    t1: Duration,
    t2: Duration,
    timeout: Duration,
    pub(crate) retransmissions: AtomicU64,
    reader_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for SipTransport {
    fn drop(&mut self) {
        if let Ok(tasks) = self.reader_tasks.get_mut() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}

impl SipTransport {
    pub(crate) async fn open(
        kind: Transport,
        server: SocketAddr,
        bind: SocketAddr,
        t1: Duration,
        timeout: Duration,
    ) -> Result<Arc<SipTransport>, SipError> {
        let udp = match kind {
            Transport::Udp => {
                let socket = UdpSocket::bind(bind)
                    .await
                    .map_err(|e| SipError::Io(format!("Failed to bind UDP {bind}: {e}")))?;
                // Connecting fixes the peer, so local_addr() is the address the server sees.
                socket.connect(server).await.map_err(|e| {
                    SipError::Io(format!("Failed to use UDP towards {server}: {e}"))
                })?;
                Some(Arc::new(socket))
            }
            Transport::Tcp => None,
        };
        let local = match &udp {
            Some(socket) => socket
                .local_addr()
                .map_err(|e| SipError::Io(format!("Failed to read the local UDP address: {e}")))?,
            None => bind,
        };
        let transport = Arc::new(SipTransport {
            kind,
            server,
            bind,
            local: Mutex::new(local),
            pending: Arc::new(Mutex::new(HashMap::new())),
            udp,
            tcp: tokio::sync::Mutex::new(None),
            next_connection: AtomicU64::new(1),
            closed_connection: Arc::new(AtomicU64::new(0)),
            t1,
            t2: t1 * 8,
            timeout,
            retransmissions: AtomicU64::new(0),
            reader_tasks: Mutex::new(Vec::new()),
        });
        if let Some(socket) = &transport.udp {
            let task = tokio::spawn(udp_reader(socket.clone(), transport.pending.clone()));
            transport.remember_task(task);
        }
        Ok(transport)
    }

    fn remember_task(&self, task: tokio::task::JoinHandle<()>) {
        if let Ok(mut tasks) = self.reader_tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
    }

    pub(crate) fn kind(&self) -> Transport {
        self.kind
    }

    /// The `sent-by` for Via and the host:port for Contact.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local.lock().map(|a| *a).unwrap_or(self.bind)
    }

    /// Makes sure a TCP connection exists (so Via can name its local port) before a request is
    /// built. A no-op for UDP.
    pub(crate) async fn prepare(&self) -> Result<(), SipError> {
        if self.kind != Transport::Tcp {
            return Ok(());
        }
        let mut slot = self.tcp.lock().await;
        if let Some((connection, _)) = slot.as_ref() {
            if *connection != self.closed_connection.load(Ordering::Acquire) {
                return Ok(());
            }
            *slot = None;
        }
        let socket = match self.bind.port() {
            // Bind only when asked to; otherwise let connect pick the source address.
            0 if self.bind.ip().is_unspecified() => {
                TcpStream::connect(self.server).await.map_err(|e| {
                    SipError::Transport(format!(
                        "Failed to connect to {} over TCP: {e}",
                        self.server
                    ))
                })?
            }
            _ => {
                let socket = match self.server {
                    SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                    SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
                }
                .map_err(|e| SipError::Io(format!("Failed to create a TCP socket: {e}")))?;
                socket
                    .bind(self.bind)
                    .map_err(|e| SipError::Io(format!("Failed to bind TCP {}: {e}", self.bind)))?;
                socket.connect(self.server).await.map_err(|e| {
                    SipError::Transport(format!(
                        "Failed to connect to {} over TCP: {e}",
                        self.server
                    ))
                })?
            }
        };
        let _ = socket.set_nodelay(true);
        let local = socket
            .local_addr()
            .map_err(|e| SipError::Io(format!("Failed to read the local TCP address: {e}")))?;
        if let Ok(mut current) = self.local.lock() {
            *current = local;
        }
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (read_half, write_half) = socket.into_split();
        let task = tokio::spawn(tcp_reader(
            read_half,
            self.pending.clone(),
            connection,
            self.closed_connection.clone(),
        ));
        self.remember_task(task);
        *slot = Some((connection, write_half));
        Ok(())
    }

    async fn send(&self, bytes: &[u8]) -> Result<(), SipError> {
        match (&self.udp, self.kind) {
            (Some(socket), _) => {
                socket.send(bytes).await.map_err(|e| {
                    SipError::Transport(format!("Failed to send to {} over UDP: {e}", self.server))
                })?;
                Ok(())
            }
            (None, _) => {
                let mut slot = self.tcp.lock().await;
                let Some((_, writer)) = slot.as_mut() else {
                    return Err(SipError::Transport(
                        "TCP connection lost before sending".into(),
                    ));
                };
                if let Err(e) = writer.write_all(bytes).await {
                    *slot = None;
                    return Err(SipError::Transport(format!(
                        "Failed to send to {} over TCP: {e}",
                        self.server
                    )));
                }
                Ok(())
            }
        }
    }

    /// Sends `request` (whose top Via carries `branch`) and waits for its final response.
    pub(crate) async fn transact(
        &self,
        request: &SipRequest,
        branch: &str,
    ) -> Result<SipResponse, SipError> {
        let bytes = request.to_bytes();
        let (sender, mut responses) = mpsc::unbounded_channel();
        let connection = match self.kind {
            Transport::Udp => 0,
            Transport::Tcp => self.tcp.lock().await.as_ref().map_or(0, |(id, _)| *id),
        };
        let _registration = Registration::new(&self.pending, branch, sender, connection)?;
        self.send(&bytes).await?;
        let deadline = Instant::now() + self.timeout;
        let mut interval = self.t1;
        let mut retransmit_at = Instant::now() + interval;
        let retransmits = self.kind == Transport::Udp;
        loop {
            tokio::select! {
                response = responses.recv() => match response {
                    Some(response) if response.status >= 200 => return Ok(response),
                    // A provisional answer: keep waiting, retransmitting only at T2.
                    Some(_) => interval = self.t2,
                    None => {
                        return Err(SipError::Transport(
                            "the connection closed before the server answered".into(),
                        ))
                    }
                },
                _ = sleep_until(retransmit_at), if retransmits => {
                    self.retransmissions.fetch_add(1, Ordering::Relaxed);
                    // A failed retransmission (ICMP unreachable while the server restarts) is
                    // not fatal: the next one or the timeout decides.
                    if let Err(e) = self.send(&bytes).await {
                        tracing::debug!(error = %e, "SIP retransmission failed");
                    }
                    interval = (interval * 2).min(self.t2);
                    retransmit_at = Instant::now() + interval;
                }
                _ = sleep_until(deadline) => return Err(SipError::Timeout(self.timeout)),
            }
        }
    }
}

/// Removes a transaction's entry from the pending map however the wait ends.
struct Registration<'a> {
    pending: &'a PendingMap,
    branch: String,
}

impl<'a> Registration<'a> {
    fn new(
        pending: &'a PendingMap,
        branch: &str,
        responses: mpsc::UnboundedSender<SipResponse>,
        connection: u64,
    ) -> Result<Self, SipError> {
        let mut map = pending
            .lock()
            .map_err(|_| SipError::Transport("transaction table poisoned".into()))?;
        map.insert(
            branch.to_owned(),
            Waiting {
                responses,
                connection,
            },
        );
        Ok(Registration {
            pending,
            branch: branch.to_owned(),
        })
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.pending.lock() {
            map.remove(&self.branch);
        }
    }
}

fn dispatch(pending: &PendingMap, bytes: &[u8]) {
    match parse_message(bytes) {
        Ok(SipMessage::Response(response)) => {
            let Some(branch) = response.branch().map(str::to_owned) else {
                tracing::debug!("SIP response without a Via branch ignored");
                return;
            };
            if let Ok(map) = pending.lock() {
                match map.get(&branch) {
                    Some(waiting) => {
                        let _ = waiting.responses.send(response);
                    }
                    // Late answers to retransmissions of finished transactions land here.
                    None => tracing::trace!(%branch, "SIP response for no open transaction"),
                }
            }
        }
        Ok(SipMessage::Request(request)) => {
            tracing::debug!(method = %request.method, "unexpected SIP request from the server ignored");
        }
        Err(e) => {
            tracing::warn!(error = %e, "malformed SIP message from the presence server ignored")
        }
    }
}

async fn udp_reader(socket: Arc<UdpSocket>, pending: PendingMap) {
    let mut buffer = vec![0u8; 65_536];
    loop {
        match socket.recv(&mut buffer).await {
            Ok(0) => {}
            Ok(n) => {
                let datagram = &buffer[..n];
                // CRLF keep-alives carry nothing.
                if datagram.iter().all(|b| *b == b'\r' || *b == b'\n') {
                    continue;
                }
                dispatch(&pending, datagram);
            }
            Err(e) => {
                // ICMP port unreachable shows up as ConnectionRefused on a connected socket
                // while the server is down; it must not end the reader.
                tracing::debug!(error = %e, "UDP receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn tcp_reader(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    pending: PendingMap,
    connection: u64,
    closed_connection: Arc<AtomicU64>,
) {
    let mut buffer: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16_384];
    'read: loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break 'read,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
        loop {
            // Skip CRLF keep-alives between messages.
            let skip = buffer
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            buffer.drain(..skip);
            match framed_len(&buffer) {
                Ok(Some(length)) => {
                    let message: Vec<u8> = buffer.drain(..length).collect();
                    dispatch(&pending, &message);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable SIP stream from the presence server; reconnecting");
                    break 'read;
                }
            }
        }
    }
    closed_connection.store(connection, Ordering::Release);
    // Fail this connection's transactions now rather than at their timeout.
    if let Ok(mut map) = pending.lock() {
        map.retain(|_, waiting| waiting.connection != connection);
    }
}

impl SipTransport {
    /// Forgets the TCP connection after a transport failure or a timeout, so the next request
    /// connects afresh (the server may have restarted without us seeing the close).
    pub(crate) async fn reset_if_transport_error(&self, error: &SipError) {
        if self.kind == Transport::Tcp
            && matches!(
                error,
                SipError::Transport(_) | SipError::Timeout(_) | SipError::Malformed(_)
            )
        {
            *self.tcp.lock().await = None;
        }
    }
}
