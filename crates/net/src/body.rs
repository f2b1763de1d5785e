//! Reading an HTTP answer's body with a cap on its size, the one way every reqwest caller
//! (Graph, Entra ID, webhook receivers) reads what a server sends.
//!
//! A server that answers with gigabytes, or with a chunked body that never ends, must not be
//! able to fill calbridge's memory: the body is read chunk by chunk and the read stops as soon
//! as it passes the cap. A `Content-Length` above the cap is refused before anything is read.

/// The cap on an Entra ID token endpoint's answer. Real answers are a few KiB (a JWT and three
/// numbers); a megabyte leaves room for any error page a proxy may put in between.
pub const TOKEN_ANSWER_CAP: usize = 1024 * 1024;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The body is longer than the cap; reading stopped at the cap.
    #[error(
        "the answer from {url} is larger than {} (calbridge's cap on this kind of answer); \
         it was not read further",
        describe_size(*.cap)
    )]
    TooLarge {
        /// Where the answer came from, without query or user information, which may carry
        /// tokens (a delta link's token, a webhook's key).
        url: String,
        cap: usize,
    },
    /// The connection failed while the body was read.
    #[error("reading the answer from {url} failed: {detail}")]
    Network { url: String, detail: String },
}

/// Reads `response`'s whole body, refusing one longer than `cap` bytes.
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, BodyError> {
    let url = redacted_url(response.url());
    // A declared length beyond the cap is refused at once; a smaller one only sizes the buffer,
    // since a server may lie about it (reqwest stops at the declared length anyway).
    let declared = response.content_length();
    if declared.is_some_and(|length| length > cap as u64) {
        return Err(BodyError::TooLarge { url, cap });
    }
    let mut body = Vec::with_capacity(declared.map_or(0, |length| length as usize));
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > cap {
                    return Err(BodyError::TooLarge { url, cap });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) => {
                return Err(BodyError::Network {
                    url,
                    detail: crate::tls::error_chain(&error.without_url()),
                })
            }
        }
    }
}

/// `scheme://host[:port]/path`: a URL as it may appear in a message. The query (skip and
/// delta tokens, signatures) and any user information are left out.
pub fn redacted_url(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// A size for people: `64 MiB`, `1 MiB`, `64 KiB`, `1000 bytes`.
pub fn describe_size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes % KIB == 0 {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_named_in_the_largest_whole_unit() {
        assert_eq!(describe_size(64 * 1024 * 1024), "64 MiB");
        assert_eq!(describe_size(1024 * 1024), "1 MiB");
        assert_eq!(describe_size(64 * 1024), "64 KiB");
        assert_eq!(describe_size(1000), "1000 bytes");
    }

    #[test]
    fn urls_in_messages_lose_their_query_and_user_information() {
        let url = reqwest::Url::parse(
            "https://user:pw@graph.example:8443/v1.0/users/a/calendarView/delta?$deltatoken=SECRET",
        )
        .unwrap();
        assert_eq!(
            redacted_url(&url),
            "https://graph.example:8443/v1.0/users/a/calendarView/delta"
        );
    }
}
