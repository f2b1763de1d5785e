//! [`AnswerServer`]: a plain-http server on 127.0.0.1:0 whose answers a test scripts by path,
//! including the ones no well-behaved server sends: a body larger than announced, or a chunked
//! body that never ends. It reads one request per connection and closes the connection after
//! its answer.
//!
//! It lives in `calbridge-net`'s tests because the size caps it tests live in
//! `calbridge_net::body`; the Graph source's and the webhook publisher's tests include this
//! same file (`#[path]`), so there is one copy.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the server answers one request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// This status and body, with its true `Content-Length`.
    Body { status: u16, body: Vec<u8> },
    /// `200` with a `Content-Length` of this many bytes, then zeros until that many are
    /// written or the client hangs up.
    Declared(u64),
    /// `200`, chunked, with chunks of 64 KiB until the client hangs up.
    Endless,
}

impl Answer {
    pub fn json(status: u16, body: &str) -> Answer {
        Answer::Body {
            status,
            body: body.as_bytes().to_vec(),
        }
    }
}

/// A request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The request target: path and query.
    pub target: String,
}

pub struct AnswerServer {
    /// `http://127.0.0.1:PORT`
    pub base_url: String,
    requests: Arc<AtomicUsize>,
    /// Bytes of body written by each streamed answer ([`Answer::Declared`], [`Answer::Endless`])
    /// that ended, sent when it ended.
    streamed_ended: tokio::sync::Mutex<mpsc::UnboundedReceiver<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AnswerServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const CHUNK: usize = 64 * 1024;

impl AnswerServer {
    /// Starts a server that answers a request for `target` (path and query) with
    /// `answer(target)`.
    pub async fn start(answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> AnswerServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the answer server");
        let base_url = format!(
            "http://{}",
            listener.local_addr().expect("the answer server's address")
        );
        let requests = Arc::new(AtomicUsize::new(0));
        let (ended, streamed_ended) = mpsc::unbounded_channel();
        let answer = Arc::new(answer);
        let counted = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = Arc::clone(&answer);
                let counted = Arc::clone(&counted);
                let ended = ended.clone();
                tokio::spawn(async move {
                    let Some(seen) = read_request(&stream).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let written = AtomicU64::new(0);
                    let streamed = write_answer(stream, answer(&seen.target), &written).await;
                    if streamed {
                        let _ = ended.send(written.load(Ordering::SeqCst));
                    }
                });
            }
        });
        AnswerServer {
            base_url,
            requests,
            streamed_ended: tokio::sync::Mutex::new(streamed_ended),
            task,
        }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits until a streamed answer ended (the client hung up, or a declared length was all
    /// written) and returns how many body bytes it wrote. A test that expects a client to stop
    /// reading an endless body sees this return; one whose client reads on never does, and
    /// its own timeout says so.
    pub async fn streamed_answer_ended(&self) -> u64 {
        self.streamed_ended
            .lock()
            .await
            .recv()
            .await
            .expect("the answer server runs")
    }
}

/// Reads the request head and its body (by `Content-Length`), so the client is not cut off
/// while still sending.
async fn read_request(stream: &TcpStream) -> Option<Seen> {
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        stream.readable().await.ok()?;
        match stream.try_read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let target = head.split(' ').nth(1).unwrap_or("/").to_string();
    let content_length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body_read = buffer.len() - head_end;
    while body_read < content_length {
        stream.readable().await.ok()?;
        match stream.try_read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => body_read += n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return None,
        }
    }
    Some(Seen { target })
}

/// Writes `answer`; true when it was a streamed one (its end is reported).
async fn write_answer(mut stream: TcpStream, answer: Answer, written: &AtomicU64) -> bool {
    let zeros = vec![b'0'; CHUNK];
    match answer {
        Answer::Body { status, body } => {
            let head = format!(
                "HTTP/1.1 {status} Whatever\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
            false
        }
        Answer::Declared(length) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
            );
            if stream.write_all(head.as_bytes()).await.is_err() {
                return true;
            }
            while written.load(Ordering::SeqCst) < length {
                let left = length - written.load(Ordering::SeqCst);
                let part = &zeros[..(left.min(CHUNK as u64) as usize)];
                if stream.write_all(part).await.is_err() {
                    break;
                }
                written.fetch_add(part.len() as u64, Ordering::SeqCst);
            }
            true
        }
        Answer::Endless => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return true;
            }
            let mut framed = format!("{CHUNK:x}\r\n").into_bytes();
            framed.extend_from_slice(&zeros);
            framed.extend_from_slice(b"\r\n");
            while stream.write_all(&framed).await.is_ok() {
                written.fetch_add(CHUNK as u64, Ordering::SeqCst);
            }
            true
        }
    }
}
