//! A tiny SIP user agent that watches a presentity: SUBSCRIBE (Event: presence, Accept:
//! application/pidf+xml) over UDP, answers every NOTIFY with 200 OK and hands out their bodies.
//! Written independently of the crate's own message code, so a misunderstanding of SIP cannot
//! hide in both.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

pub struct Notify {
    pub subscription_state: String,
    pub body: String,
}

pub struct Watcher {
    socket: UdpSocket,
    server: SocketAddr,
    local: SocketAddr,
    call_id: String,
    from_tag: String,
    cseq: u32,
    target: String,
    /// NOTIFYs that arrived while waiting for something else.
    backlog: Vec<Notify>,
}

fn token() -> String {
    format!("{:016x}{:08x}", rand_u64(), std::process::id())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn headers<'a>(head: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    head.split("\r\n").skip(1).filter_map(move |line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

impl Watcher {
    pub async fn new(server: SocketAddr, target: &str) -> Watcher {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind watcher socket");
        let local = socket.local_addr().expect("watcher address");
        Watcher {
            socket,
            server,
            local,
            call_id: format!("{}@watcher", token()),
            from_tag: token(),
            cseq: 0,
            target: target.to_owned(),
            backlog: Vec::new(),
        }
    }

    /// Sends SUBSCRIBE and waits for its final response (2xx expected), answering NOTIFYs that
    /// overtake it.
    pub async fn subscribe(&mut self, expires: u32) -> u16 {
        self.cseq += 1;
        let branch = format!("z9hG4bK{}", token());
        let request = format!(
            "SUBSCRIBE {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:watcher@calbridge.test>;tag={tag}\r\n\
             To: <{target}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} SUBSCRIBE\r\n\
             Contact: <sip:watcher@{local}>\r\n\
             Event: presence\r\n\
             Accept: application/pidf+xml\r\n\
             Expires: {expires}\r\n\
             Content-Length: 0\r\n\r\n",
            target = self.target,
            local = self.local,
            tag = self.from_tag,
            call_id = self.call_id,
            cseq = self.cseq,
        );
        self.socket
            .send_to(request.as_bytes(), self.server)
            .await
            .expect("send SUBSCRIBE");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (head, body, from) = self
                .receive(deadline)
                .await
                .expect("no answer to SUBSCRIBE");
            if head.starts_with("SIP/2.0 ") {
                if header(&head, "CSeq").is_some_and(|c| c.ends_with("SUBSCRIBE")) {
                    let status: u16 = head[8..11].parse().expect("status code");
                    if status >= 200 {
                        return status;
                    }
                }
            } else if head.starts_with("NOTIFY ") {
                let notify = self.answer(&head, body, from).await;
                self.backlog.push(notify);
            }
        }
    }

    async fn receive(&self, deadline: Instant) -> Option<(String, String, SocketAddr)> {
        let mut buffer = vec![0u8; 65_536];
        let (n, from) = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buffer))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        Some((head.to_owned(), body.to_owned(), from))
    }

    async fn answer(&self, head: &str, body: String, from: SocketAddr) -> Notify {
        let mut response = String::from("SIP/2.0 200 OK\r\n");
        for via in headers(head, "Via") {
            response.push_str(&format!("Via: {via}\r\n"));
        }
        for name in ["From", "To", "Call-ID", "CSeq"] {
            if let Some(value) = header(head, name) {
                response.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        response.push_str("Content-Length: 0\r\n\r\n");
        self.socket
            .send_to(response.as_bytes(), from)
            .await
            .expect("answer NOTIFY");
        Notify {
            subscription_state: header(head, "Subscription-State")
                .unwrap_or_default()
                .to_owned(),
            body,
        }
    }

    /// The first NOTIFY (already received or arriving within `wait`) whose body satisfies
    /// `accept`; earlier ones are consumed. Panics with every body seen when none does.
    pub async fn notify_where(
        &mut self,
        wait: Duration,
        accept: impl Fn(&Notify) -> bool,
    ) -> Notify {
        let mut seen = Vec::new();
        for notify in std::mem::take(&mut self.backlog) {
            if accept(&notify) {
                return notify;
            }
            seen.push(notify.body);
        }
        let deadline = Instant::now() + wait;
        while let Some((head, body, from)) = self.receive(deadline).await {
            if head.starts_with("NOTIFY ") {
                let notify = self.answer(&head, body, from).await;
                if accept(&notify) {
                    return notify;
                }
                seen.push(notify.body);
            }
        }
        panic!(
            "no matching NOTIFY for {} within {wait:?}; bodies seen: {seen:#?}",
            self.target
        );
    }
}
