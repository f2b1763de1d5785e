//! Just enough SIP (RFC 3261) to send a PUBLISH and read its answer: a request builder and a
//! response parser. Header names are matched case-insensitively and in their compact forms
//! (`v`, `i`, `l`, `c`, …), because servers are free to use either.

use std::fmt::Write as _;

use crate::SipError;

/// A SIP request about to be sent. Headers keep their insertion order; `Content-Length` is
/// always computed from the body when the request is serialized.
#[derive(Debug, Clone)]
pub(crate) struct SipRequest {
    pub(crate) method: &'static str,
    pub(crate) request_uri: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Option<(String, Vec<u8>)>,
}

impl SipRequest {
    pub(crate) fn new(method: &'static str, request_uri: impl Into<String>) -> Self {
        SipRequest {
            method,
            request_uri: request_uri.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub(crate) fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    pub(crate) fn with_body(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.body = Some((content_type.to_owned(), body));
        self
    }

    /// Replaces the value of an existing header, or appends it.
    pub(crate) fn set_header(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1 = value,
            None => self.headers.push((name.to_owned(), value)),
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut head = String::with_capacity(512);
        let _ = write!(head, "{} {} SIP/2.0\r\n", self.method, self.request_uri);
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let body: &[u8] = match &self.body {
            Some((content_type, body)) => {
                let _ = write!(head, "Content-Type: {content_type}\r\n");
                body
            }
            None => &[],
        };
        let _ = write!(head, "Content-Length: {}\r\n\r\n", body.len());
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }
}

/// A parsed SIP message from the network: either a response (to one of our requests) or a
/// request the server sent us (which the publisher does not expect and ignores).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SipMessage {
    Response(SipResponse),
    Request(IncomingRequest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IncomingRequest {
    pub(crate) method: String,
    pub(crate) request_uri: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SipResponse {
    pub(crate) status: u16,
    pub(crate) reason: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

/// Compact header forms (RFC 3261 section 7.3.3 and RFC 3903's none).
fn canonical_name(name: &str) -> &str {
    match name {
        "v" | "V" => "Via",
        "i" | "I" => "Call-ID",
        "l" | "L" => "Content-Length",
        "c" | "C" => "Content-Type",
        "f" | "F" => "From",
        "t" | "T" => "To",
        "m" | "M" => "Contact",
        "o" | "O" => "Event",
        _ => name,
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| canonical_name(n).eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn find_headers<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| canonical_name(n).eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl SipResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub(crate) fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        find_headers(&self.headers, name)
    }

    /// The `branch` parameter of the topmost Via: the key of the client transaction.
    pub(crate) fn branch(&self) -> Option<&str> {
        let via = self.header("Via")?;
        // A Via header may carry several comma-separated values; the first is ours.
        let first = via.split(',').next()?;
        via_param(first, "branch")
    }

    /// A delta-seconds header such as `Expires` or `Min-Expires`.
    pub(crate) fn seconds(&self, name: &str) -> Option<u32> {
        self.header(name)?.trim().parse().ok()
    }
}

fn via_param<'a>(via: &'a str, name: &str) -> Option<&'a str> {
    via.split(';').skip(1).find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Where the head of a message ends, or `None` while it is incomplete.
pub(crate) fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

/// The length of the first complete message in a stream buffer (TCP framing by
/// `Content-Length`), `Ok(None)` when more bytes are needed.
pub(crate) fn framed_len(buffer: &[u8]) -> Result<Option<usize>, SipError> {
    let Some(head_len) = head_end(buffer) else {
        if buffer.len() > MAX_HEAD {
            return Err(SipError::Malformed(
                "message head longer than 64 KiB".into(),
            ));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buffer[..head_len])
        .map_err(|_| SipError::Malformed("message head is not UTF-8".into()))?;
    let (_, headers) = parse_head_lines(head)?;
    // On a stream, Content-Length is mandatory (RFC 3261 section 18.3).
    let body_len = content_length(&headers)?
        .ok_or_else(|| SipError::Malformed("stream message without Content-Length".into()))?;
    let total = head_len + body_len;
    Ok((buffer.len() >= total).then_some(total))
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

fn content_length(headers: &[(String, String)]) -> Result<Option<usize>, SipError> {
    match find_header(headers, "Content-Length") {
        None => Ok(None),
        Some(value) => {
            let length: usize = value.trim().parse().map_err(|_| {
                SipError::Malformed(format!("bad Content-Length {}", quoted(value)))
            })?;
            if length > MAX_BODY {
                return Err(SipError::Malformed(format!(
                    "Content-Length {length} too large"
                )));
            }
            Ok(Some(length))
        }
    }
}

type Headers = Vec<(String, String)>;

/// Splits a message head into its start line and headers, unfolding continuation lines.
fn parse_head_lines(head: &str) -> Result<(&str, Headers), SipError> {
    let mut lines = head.split("\r\n");
    let start = lines
        .next()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| SipError::Malformed("empty message".into()))?;
    let mut headers: Headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            // Folded continuation of the previous header (RFC 3261 section 7.3.1).
            let last = headers
                .last_mut()
                .ok_or_else(|| SipError::Malformed("continuation line before any header".into()))?;
            last.1.push(' ');
            last.1.push_str(line.trim());
            continue;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| {
            SipError::Malformed(format!("header line without colon: {}", quoted(line)))
        })?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok((start, headers))
}

/// Parses one whole message (a UDP datagram, or a frame cut by [`framed_len`]).
pub(crate) fn parse_message(bytes: &[u8]) -> Result<SipMessage, SipError> {
    // Some servers send CRLF keep-alives; callers skip them, but be lenient here too.
    let start_offset = bytes
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(bytes.len());
    let bytes = &bytes[start_offset..];
    let head_len =
        head_end(bytes).ok_or_else(|| SipError::Malformed("message head not terminated".into()))?;
    if head_len > MAX_HEAD {
        return Err(SipError::Malformed(
            "message head longer than 64 KiB".into(),
        ));
    }
    let head = std::str::from_utf8(&bytes[..head_len])
        .map_err(|_| SipError::Malformed("message head is not UTF-8".into()))?;
    let (start, headers) = parse_head_lines(head)?;
    let rest = &bytes[head_len..];
    let body = match content_length(&headers)? {
        Some(length) if length <= rest.len() => rest[..length].to_vec(),
        Some(length) => {
            return Err(SipError::Malformed(format!(
                "body shorter ({}) than Content-Length {length}",
                rest.len()
            )))
        }
        None => rest.to_vec(),
    };
    if let Some(status_line) = start.strip_prefix("SIP/2.0 ") {
        let (code, reason) = status_line.split_once(' ').unwrap_or((status_line, ""));
        let status: u16 = code
            .parse()
            .ok()
            .filter(|c| (100..700).contains(c))
            .ok_or_else(|| SipError::Malformed(format!("bad status line {}", quoted(start))))?;
        return Ok(SipMessage::Response(SipResponse {
            status,
            reason: shorten(reason, 200),
            headers,
            body,
        }));
    }
    let mut parts = start.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(uri), Some("SIP/2.0"), None) if !method.is_empty() => {
            Ok(SipMessage::Request(IncomingRequest {
                method: method.to_owned(),
                request_uri: uri.to_owned(),
                headers,
                body,
            }))
        }
        _ => Err(SipError::Malformed(format!(
            "bad start line {}",
            quoted(start)
        ))),
    }
}

/// What a server sent, in an error or log line, where a 64 KiB header must not go whole.
pub(crate) use calbridge_domain::shorten;

/// A piece of a message quoted in an error, escaped and then shortened to 100 characters
/// (escaping may make one character ten).
pub(crate) fn quoted(text: &str) -> String {
    shorten(&format!("{:?}", shorten(text, 100)), 100)
}

/// A fresh random token of `len` lowercase hex characters (tags, Call-IDs, branches, cnonces).
pub(crate) fn random_token(len: usize) -> String {
    use rand::Rng as _;
    const HEX: &[u8] = b"0123456789abcdef";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| HEX[rng.gen_range(0..16)] as char)
        .collect()
}

/// A Via branch: the RFC 3261 magic cookie followed by a random token.
pub(crate) fn new_branch() -> String {
    format!("z9hG4bK{}", random_token(20))
}

/// Parameters of a challenge or credentials header (`Digest realm="x", nonce="y", qop="auth"`).
pub(crate) fn auth_params(value: &str) -> Option<(String, Vec<(String, String)>)> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(char::is_whitespace)?;
    let mut params = Vec::new();
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        let (key, after_key) = rest.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after_key = after_key.trim_start();
        let (val, remaining) = if let Some(quoted) = after_key.strip_prefix('"') {
            // Quoted string with backslash escapes.
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, ch)) = chars.next() {
                match ch {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            out.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    other => out.push(other),
                }
            }
            let end = end?;
            (out, &quoted[end..])
        } else {
            let end = after_key.find(',').unwrap_or(after_key.len());
            (after_key[..end].trim().to_owned(), &after_key[end..])
        };
        params.push((key, val));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_owned(), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_serializes_with_computed_content_length_and_type() {
        let request = SipRequest::new("PUBLISH", "sip:alice@example.com")
            .header("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport")
            .header("Max-Forwards", "70")
            .with_body("application/pidf+xml", b"<x/>".to_vec());
        let text = String::from_utf8(request.to_bytes()).unwrap();
        assert_eq!(
            text,
            "PUBLISH sip:alice@example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport\r\n\
             Max-Forwards: 70\r\n\
             Content-Type: application/pidf+xml\r\n\
             Content-Length: 4\r\n\r\n<x/>"
        );
    }

    #[test]
    fn bodyless_request_says_content_length_zero() {
        let text = String::from_utf8(SipRequest::new("PUBLISH", "sip:a@b").to_bytes()).unwrap();
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
        assert!(!text.contains("Content-Type"), "{text}");
    }

    #[test]
    fn response_parsing_reads_etag_expires_branch_and_compact_headers() {
        let raw = b"SIP/2.0 200 OK\r\n\
            v: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK123;rport=5062, SIP/2.0/UDP x;branch=z9hG4bKother\r\n\
            SIP-ETag: a.1234.0\r\n\
            expires: 3600\r\n\
            CSeq: 7 PUBLISH\r\n\
            l: 0\r\n\r\n";
        let SipMessage::Response(response) = parse_message(raw).unwrap() else {
            panic!("not a response")
        };
        assert_eq!(response.status, 200);
        assert_eq!(response.reason, "OK");
        assert_eq!(response.branch(), Some("z9hG4bK123"));
        assert_eq!(response.header("sip-etag"), Some("a.1234.0"));
        assert_eq!(response.seconds("Expires"), Some(3600));
    }

    #[test]
    fn folded_headers_are_unfolded() {
        let raw = b"SIP/2.0 401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"r\",\r\n nonce=\"n\"\r\nContent-Length: 0\r\n\r\n";
        let SipMessage::Response(response) = parse_message(raw).unwrap() else {
            panic!("not a response")
        };
        assert_eq!(
            response.header("WWW-Authenticate"),
            Some("Digest realm=\"r\", nonce=\"n\"")
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            b"",
            b"\r\n\r\n",
            b"SIP/2.0 abc OK\r\n\r\n",
            b"SIP/2.0 99 Low\r\n\r\n",
            b"HELLO\r\n\r\n",
            b"SIP/2.0 200 OK\r\nno colon here\r\n\r\n",
            b"SIP/2.0 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"SIP/2.0 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"SIP/2.0 200 OK\r\n",
            b"\xff\xfe\r\n\r\n",
            b"SIP/2.0 200 OK\r\n continuation first\r\n\r\n",
        ];
        for case in cases {
            assert!(
                parse_message(case).is_err(),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn incoming_requests_are_recognised() {
        let raw =
            b"NOTIFY sip:w@127.0.0.1:5070 SIP/2.0\r\nCall-ID: x\r\nContent-Length: 2\r\n\r\nhi";
        let SipMessage::Request(request) = parse_message(raw).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(request.method, "NOTIFY");
        assert_eq!(request.body, b"hi");
        assert_eq!(find_header(&request.headers, "Call-ID"), Some("x"));
    }

    #[test]
    fn stream_framing_waits_for_the_whole_body() {
        let message = b"SIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(framed_len(&message[..10]).unwrap(), None);
        assert_eq!(framed_len(&message[..message.len() - 1]).unwrap(), None);
        let mut two = message.to_vec();
        two.extend_from_slice(message);
        assert_eq!(framed_len(&two).unwrap(), Some(message.len()));
        assert!(
            framed_len(b"SIP/2.0 200 OK\r\n\r\n").is_err(),
            "no Content-Length on a stream"
        );
    }

    #[test]
    fn auth_params_handle_quotes_commas_and_tokens() {
        let (scheme, params) = auth_params(
            r#"Digest realm="calbridge, test", nonce="dcd98b\"7102", algorithm=MD5, qop="auth,auth-int", stale=FALSE"#,
        )
        .unwrap();
        assert_eq!(scheme, "Digest");
        assert_eq!(
            params,
            vec![
                ("realm".to_owned(), "calbridge, test".to_owned()),
                ("nonce".to_owned(), "dcd98b\"7102".to_owned()),
                ("algorithm".to_owned(), "MD5".to_owned()),
                ("qop".to_owned(), "auth,auth-int".to_owned()),
                ("stale".to_owned(), "FALSE".to_owned()),
            ]
        );
        assert!(auth_params("Digest realm=\"unterminated").is_none());
    }

    #[test]
    fn branches_carry_the_magic_cookie() {
        let branch = new_branch();
        assert!(branch.starts_with("z9hG4bK"));
        assert_ne!(branch, new_branch());
    }
}
