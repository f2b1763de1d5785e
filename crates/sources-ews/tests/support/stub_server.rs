//! Servers standing in for a site's: [`AutodiscoverStub`], a plain-http Autodiscover whose
//! answers a test scripts, and [`DeadEws`], an EWS URL whose server is gone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain-http server standing in for a site's Autodiscover: the n-th request for
/// `/autodiscover/autodiscover.xml` gets the n-th [`StubAnswer`] (the last one from then on),
/// [`STUB`] in its URL replaced by the stub's own `http://127.0.0.1:PORT`.
/// `/down/…` is answered 503 with an HTML page, as by a load balancer whose Exchange is gone;
/// `/empty/…` 200 without a body; `/endless/…` 200 with a chunked SOAP envelope that never
/// ends (see [`AutodiscoverStub::endless_answers_ended`]); every other path 404, as by an IIS
/// without EWS.
pub struct AutodiscoverStub {
    pub url: String,
    asked: Arc<AtomicUsize>,
    other_requests: Arc<AtomicUsize>,
    endless: Arc<Endless>,
    task: tokio::task::JoinHandle<()>,
}

/// The endless answers a stub has given up on because the client went away.
#[derive(Default)]
struct Endless {
    ended: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl AutodiscoverStub {
    /// Requests for Autodiscover.
    pub fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }

    /// Requests for anything but Autodiscover.
    pub fn other_requests(&self) -> usize {
        self.other_requests.load(Ordering::SeqCst)
    }

    /// The address the stub listens on.
    pub fn address(&self) -> SocketAddr {
        self.url
            .trim_start_matches("http://")
            .trim_end_matches("/autodiscover/autodiscover.xml")
            .parse()
            .unwrap()
    }

    /// Waits until `n` endless answers have ended because their client closed the connection
    /// (a client that kept reading would never let one end).
    pub async fn endless_answers_ended(&self, n: usize) {
        loop {
            let changed = self.endless.changed.notified();
            if self.endless.ended.load(Ordering::SeqCst) >= n {
                return;
            }
            changed.await;
        }
    }
}

/// Writes a 200 whose chunked body starts a SOAP envelope (or, for Autodiscover, its answer)
/// and never ends it, until the client closes the connection.
async fn answer_endlessly(stream: &mut tokio::net::TcpStream, start: &str) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/xml; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let padding = "<t:Padding>".to_string() + &"x".repeat(64 * 1024) + "</t:Padding>";
    let mut chunk = start.to_string();
    loop {
        let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
        if stream.write_all(framed.as_bytes()).await.is_err() {
            return;
        }
        chunk.clone_from(&padding);
    }
}

impl Drop for AutodiscoverStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Stands for the stub's own `http://127.0.0.1:PORT` in the URLs of its [`StubAnswer`]s.
pub const STUB: &str = "{stub}";

fn settings_answer(ews_url: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"><Response xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"><Account><AccountType>email</AccountType><Action>settings</Action><Protocol><Type>EXPR</Type><EwsUrl>{ews_url}</EwsUrl></Protocol></Account></Response></Autodiscover>"#
    )
}

/// What the stub answers an Autodiscover request.
#[derive(Clone)]
pub enum StubAnswer {
    /// Settings naming this EWS URL.
    Settings(String),
    /// HTTP 302 to this URL.
    Redirect(String),
    /// HTTP 503, as while Autodiscover is down.
    Down,
    /// HTTP 200 with an answer that never ends.
    Endless,
}

/// A stub whose n-th Autodiscover answer is settings naming the n-th of `ews_urls`.
pub async fn autodiscover_stub(ews_urls: Vec<String>) -> AutodiscoverStub {
    autodiscover_stub_answering(ews_urls.into_iter().map(StubAnswer::Settings).collect()).await
}

pub async fn autodiscover_stub_answering(answers: Vec<StubAnswer>) -> AutodiscoverStub {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = Arc::new(AtomicUsize::new(0));
    let other_requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let other_counter = Arc::clone(&other_requests);
    let endless = Arc::new(Endless::default());
    let endless_for_task = Arc::clone(&endless);
    let base = format!("http://127.0.0.1:{port}");
    let answers: Arc<Vec<StubAnswer>> = Arc::new(
        answers
            .into_iter()
            .map(|answer| match answer {
                StubAnswer::Settings(url) => StubAnswer::Settings(url.replace(STUB, &base)),
                StubAnswer::Redirect(url) => StubAnswer::Redirect(url.replace(STUB, &base)),
                other => other,
            })
            .collect(),
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            let other_counter = Arc::clone(&other_counter);
            let answers = Arc::clone(&answers);
            let endless = Arc::clone(&endless_for_task);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&request).to_ascii_lowercase();
                let endless_start = if head.starts_with("post /endless/") {
                    other_counter.fetch_add(1, Ordering::SeqCst);
                    Some(
                        r#"<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>"#,
                    )
                } else if head.starts_with("get /autodiscover/autodiscover.xml ")
                    && matches!(
                        answers[counter.load(Ordering::SeqCst).min(answers.len() - 1)],
                        StubAnswer::Endless
                    )
                {
                    counter.fetch_add(1, Ordering::SeqCst);
                    Some(
                        r#"<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"><Response>"#,
                    )
                } else {
                    None
                };
                if let Some(start) = endless_start {
                    answer_endlessly(&mut stream, start).await;
                    endless.ended.fetch_add(1, Ordering::SeqCst);
                    endless.changed.notify_waiters();
                    return;
                }
                let mut location = String::new();
                let (status, body) = if head.starts_with("get /autodiscover/autodiscover.xml ") {
                    let index = counter.fetch_add(1, Ordering::SeqCst);
                    match &answers[index.min(answers.len() - 1)] {
                        StubAnswer::Settings(ews_url) => ("200 OK", settings_answer(ews_url)),
                        StubAnswer::Redirect(url) => {
                            location = format!("Location: {url}\r\n");
                            ("302 Found", String::new())
                        }
                        StubAnswer::Down | StubAnswer::Endless => (
                            "503 Service Unavailable",
                            "<html><body>Service Unavailable</body></html>".to_string(),
                        ),
                    }
                } else if head.starts_with("post /empty/") {
                    other_counter.fetch_add(1, Ordering::SeqCst);
                    ("200 OK", String::new())
                } else if head.starts_with("post /down/") {
                    other_counter.fetch_add(1, Ordering::SeqCst);
                    (
                        "503 Service Unavailable",
                        "<html><body>No server is available to handle this request.</body></html>"
                            .to_string(),
                    )
                } else {
                    other_counter.fetch_add(1, Ordering::SeqCst);
                    ("404 Not Found", "Not Found".to_string())
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\n{location}Content-Type: text/xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    AutodiscoverStub {
        url: format!("http://127.0.0.1:{port}/autodiscover/autodiscover.xml"),
        asked,
        other_requests,
        endless,
        task,
    }
}

/// An EWS URL whose server is gone: its port is bound but not listening, so connections are
/// refused, and it stays bound, so that no other test's server takes it meanwhile.
pub struct DeadEws {
    pub url: String,
    _port: tokio::net::TcpSocket,
}

impl DeadEws {
    /// The address that refuses connections.
    pub fn address(&self) -> SocketAddr {
        self.url
            .trim_start_matches("https://")
            .trim_end_matches("/EWS/Exchange.asmx")
            .parse()
            .unwrap()
    }
}

pub fn dead_ews() -> DeadEws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    DeadEws {
        url: format!("https://127.0.0.1:{port}/EWS/Exchange.asmx"),
        _port: socket,
    }
}
