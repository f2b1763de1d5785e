//! The room panel: `/panel/{room}` is a kiosk page (green when the room is free, red when it
//! is occupied) that a tablet beside the door shows all day, `/panel/{room}/state` the room as
//! `GET /api/v1/rooms/{address}` answers it, and `/panel/{room}/check-in` its check-in button.
//!
//! A panel does not hold the API token: it is authorised by a **panel token** in its URL
//! (`?token=…`), the HMAC-SHA256 of the room's address under the panel key, which the store
//! keeps sealed among its secrets ([`PANEL_KEY_SECRET`]). A panel token opens that room's panel
//! and nothing else (`/api/v1/*` takes only the API token); replacing the key
//! (`calbridge panel-url --rotate`) makes every panel link made before it fail.
//!
//! The key is read from the store at every panel request rather than kept in memory, so that a
//! rotation reaches every instance sharing a PostgreSQL store at once; a sealed secret is one
//! row and one decryption.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use calbridge_domain::{MailboxAddress, Secret};
use calbridge_net::percent::{decode_form_value, encode_path_segment, encode_query_value};
use calbridge_store::{PersonKey, Store};
use ring::hmac;

use super::{api_error, ApiState};

const PANEL_PAGE: &str = include_str!("panel.html");

/// The name of the panel key among the store's sealed secrets.
pub const PANEL_KEY_SECRET: &str = "rooms.panel_key";

/// What a presented panel token does for a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelAccess {
    /// The token is the room's under the current key.
    Granted,
    /// No token was presented (401).
    Missing,
    /// A token was presented but is not this room's under the current key: another room's, one
    /// made before the key was replaced, or none at all (403).
    Wrong,
}

/// The panel token of `room` under `key`: the HMAC-SHA256 of the address, in lower-case hex.
pub fn panel_token(key: &Secret, room: &MailboxAddress) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.expose().as_bytes());
    hmac::sign(&key, room.as_str().as_bytes())
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Whether `presented` opens the panel of `room`. `key` is `None` while no panel link was ever
/// made (no key in the store yet): then no token is right. The comparison is ring's
/// constant-time HMAC verification, so response times do not tell how much of a guess was right.
pub fn check_panel_token(
    key: Option<&Secret>,
    room: &MailboxAddress,
    presented: Option<&str>,
) -> PanelAccess {
    let Some(presented) = presented.filter(|token| !token.is_empty()) else {
        return PanelAccess::Missing;
    };
    let (Some(key), Some(tag)) = (key, decode_hex(presented)) else {
        return PanelAccess::Wrong;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.expose().as_bytes());
    match hmac::verify(&key, room.as_str().as_bytes(), &tag) {
        Ok(()) => PanelAccess::Granted,
        Err(_) => PanelAccess::Wrong,
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
        .collect()
}

/// The panel key, made (and sealed in the store) on its first use.
pub async fn panel_key(store: &dyn Store) -> anyhow::Result<Secret> {
    Ok(crate::service::secret_or_new(store, PANEL_KEY_SECRET)
        .await?
        .0)
}

/// Replaces the panel key: every panel link made before stops working.
pub async fn rotate_panel_key(store: &dyn Store) -> anyhow::Result<Secret> {
    let key = Secret::new(crate::service::random_token()?);
    store.put_secret(PANEL_KEY_SECRET, &key).await?;
    Ok(key)
}

/// The panel's path with its token: `/panel/{room}?token=…`.
pub fn panel_path(key: &Secret, room: &MailboxAddress) -> String {
    format!(
        "/panel/{}?token={}",
        encode_path_segment(room.as_str()),
        encode_query_value(&panel_token(key, room))
    )
}

/// The followed room at `raw` (a path segment), or the answer saying why there is none.
pub(super) async fn followed_room(state: &ApiState, raw: &str) -> Result<PersonKey, Response> {
    let address = MailboxAddress::parse(raw)
        .map_err(|error| api_error(StatusCode::BAD_REQUEST, error.to_string()))?;
    let rooms = state.store.list_rooms().await.map_err(|error| {
        api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the rooms from the store: {error}"),
        )
    })?;
    rooms
        .into_iter()
        .map(|(key, _)| key)
        .find(|key| key.address == address)
        .ok_or_else(|| {
            api_error(
                StatusCode::NOT_FOUND,
                format!(
                    "no room {address} is followed (rooms come from a [[directory]] rooms entry)"
                ),
            )
        })
}

/// Why a panel request is refused: its status and what to do, for the panel page (as a page)
/// or its calls (as `{"error": …}`).
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn json(self) -> Response {
        api_error(self.status, self.message)
    }

    /// A page a screen on a wall can show: the status in big letters and what to do.
    fn page(self) -> Response {
        let escaped = self
            .message
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let title = match self.status {
            StatusCode::UNAUTHORIZED => "No panel token",
            StatusCode::FORBIDDEN => "Panel link not valid",
            _ => "Panel not available",
        };
        (
            self.status,
            [(header::CACHE_CONTROL, "no-store")],
            Html(format!(
                "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\"><title>{title}</title></head>\
                 <body style=\"margin:0;padding:6vh 5vw;background:#4b5563;color:#fff;font-family:system-ui,sans-serif\">\
                 <h1 style=\"font-size:7vw;margin:0 0 3vh\">{title}</h1><p id=\"refusal\" style=\"font-size:2.6vw\">{escaped}</p></body></html>"
            )),
        )
            .into_response()
    }
}

/// Checks the `?token=` of a panel request for the room in its path: the room's address, or
/// why not (400 for an address that is none, 401 without a token, 403 for a wrong one).
/// Nothing of the token goes into the answer or a log line.
async fn authorise(
    state: &ApiState,
    raw_room: &str,
    query: Option<&str>,
) -> Result<MailboxAddress, Refusal> {
    let room = MailboxAddress::parse(raw_room).map_err(|error| Refusal {
        status: StatusCode::BAD_REQUEST,
        message: error.to_string(),
    })?;
    let presented = query.and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token=").map(decode_form_value))
    });
    let key = state
        .store
        .get_secret(PANEL_KEY_SECRET)
        .await
        .map_err(|error| Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("cannot read the panel key from the store: {error}"),
        })?;
    match check_panel_token(key.as_ref(), &room, presented.as_deref()) {
        PanelAccess::Granted => Ok(room),
        PanelAccess::Missing => Err(Refusal {
            status: StatusCode::UNAUTHORIZED,
            message: format!(
                "the panel of room {room} needs its token (?token=…): take the panel URL from the admin page's Rooms tab or `calbridge panel-url {room}`"
            ),
        }),
        PanelAccess::Wrong => Err(Refusal {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "this panel token does not open room {room}: it belongs to another room, or the panel key was replaced (calbridge panel-url --rotate) after it was made; take the room's panel URL again"
            ),
        }),
    }
}

/// `GET /panel/{room}?token=…`: the panel page.
pub async fn page(
    State(state): State<Arc<ApiState>>,
    Path(room): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(refused) = authorise(&state, &room, query.as_deref()).await {
        return refused.page();
    }
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            // Nothing from elsewhere: the page is one file and talks only to this service.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        Html(PANEL_PAGE),
    )
        .into_response()
}

/// `GET /panel/{room}/state?token=…`: the room as `GET /api/v1/rooms/{address}` answers it
/// (its state named by `[rooms] show`, today's meetings, and `check_in` when check-in is on).
pub async fn room_state(
    State(state): State<Arc<ApiState>>,
    Path(room): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let room = match authorise(&state, &room, query.as_deref()).await {
        Ok(room) => room,
        Err(refused) => return refused.json(),
    };
    let mut answer = super::rooms::detail(State(state), Path(room.as_str().to_string())).await;
    answer.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    answer
}

/// `POST /panel/{room}/check-in?token=…`: the panel's check-in button.
pub async fn check_in(
    State(state): State<Arc<ApiState>>,
    Path(room): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(refused) = authorise(&state, &room, query.as_deref()).await {
        return refused.json();
    }
    api_check_in(State(state), Path(room)).await
}

/// `POST /api/v1/rooms/{address}/check-in` (API token): the same check-in as the panel's.
pub async fn api_check_in(
    State(state): State<Arc<ApiState>>,
    Path(room): Path<String>,
) -> Response {
    match followed_room(&state, &room).await {
        Ok(key) => super::rooms::check_in(&state, &key).await,
        Err(answer) => answer,
    }
}

/// `GET /api/v1/rooms/{address}/panel` (API token): the room's panel URL, made under the
/// current panel key (made on the first call).
pub async fn api_panel_url(
    State(state): State<Arc<ApiState>>,
    Path(room): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let key = match followed_room(&state, &room).await {
        Ok(key) => key,
        Err(answer) => return answer,
    };
    let panel_key = match panel_key(state.store.as_ref()).await {
        Ok(panel_key) => panel_key,
        Err(error) => {
            return api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read or make the panel key in the store: {error:#}"),
            )
        }
    };
    let path = panel_path(&panel_key, &key.address);
    // `api.public_url` when set; otherwise the host this request came to, which is how the
    // admin page's reader reaches the service.
    let base = state.public_url.clone().or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .map(|host| format!("http://{host}"))
    });
    axum::Json(serde_json::json!({
        "room": key.address.as_str(),
        "path": path,
        "url": base.map(|base| format!("{}{path}", base.trim_end_matches('/'))),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(address: &str) -> MailboxAddress {
        MailboxAddress::parse(address).expect("an address")
    }

    #[test]
    fn the_rooms_own_token_opens_its_panel() {
        let key = Secret::new("0123456789abcdef0123456789abcdef".to_string());
        let token = panel_token(&key, &room("room.1@contoso.example"));
        assert_eq!(token.len(), 64, "{token}");
        assert_eq!(
            check_panel_token(Some(&key), &room("Room.1@Contoso.example"), Some(&token)),
            PanelAccess::Granted
        );
    }

    #[test]
    fn a_token_matches_a_known_hmac_sha256_vector() {
        // `printf 'room.1@contoso.example' | openssl dgst -sha256 -hmac Jefe`
        let key = Secret::new("Jefe".to_string());
        let expected = "670b6bcfbddb70d8fd6a38b537186f73bf0b78d17607b0e9d7cf50e403b1f7c7";
        assert_eq!(panel_token(&key, &room("room.1@contoso.example")), expected);
        assert_eq!(hex_hmac(b"Jefe", b"room.1@contoso.example"), expected);
    }

    /// An independent HMAC-SHA256 (RFC 2104 over ring's SHA-256), so that the token is known to
    /// be the HMAC of the address and not some other use of the key.
    fn hex_hmac(key: &[u8], data: &[u8]) -> String {
        let mut block = [0u8; 64];
        block[..key.len()].copy_from_slice(key);
        let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
        let mut inner = ring::digest::Context::new(&ring::digest::SHA256);
        inner.update(&pad(0x36));
        inner.update(data);
        let inner = inner.finish();
        let mut outer = ring::digest::Context::new(&ring::digest::SHA256);
        outer.update(&pad(0x5c));
        outer.update(inner.as_ref());
        outer
            .finish()
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    #[test]
    fn a_missing_or_empty_token_is_missing_not_wrong() {
        let key = Secret::new("k".repeat(48));
        let address = room("room.1@contoso.example");
        assert_eq!(
            check_panel_token(Some(&key), &address, None),
            PanelAccess::Missing
        );
        assert_eq!(
            check_panel_token(Some(&key), &address, Some("")),
            PanelAccess::Missing
        );
        assert_eq!(
            check_panel_token(None, &address, None),
            PanelAccess::Missing
        );
    }

    #[test]
    fn another_rooms_token_or_a_forged_one_is_wrong() {
        let key = Secret::new("k".repeat(48));
        let first = room("room.1@contoso.example");
        let second = room("room.2@contoso.example");
        let token_of_second = panel_token(&key, &second);
        assert_eq!(
            check_panel_token(Some(&key), &first, Some(&token_of_second)),
            PanelAccess::Wrong
        );
        let mut flipped = panel_token(&key, &first);
        let last = if flipped.ends_with('0') { "1" } else { "0" };
        flipped.replace_range(63.., last);
        for forged in [
            flipped.as_str(),
            "not hex at all",
            "abc",
            "ü".repeat(32).as_str(),
        ] {
            assert_eq!(
                check_panel_token(Some(&key), &first, Some(forged)),
                PanelAccess::Wrong,
                "{forged}"
            );
        }
        // Without a key in the store no token is right.
        assert_eq!(
            check_panel_token(None, &first, Some(&panel_token(&key, &first))),
            PanelAccess::Wrong
        );
    }

    #[test]
    fn a_rotated_key_refuses_the_tokens_made_before() {
        let old_key = Secret::new("a".repeat(48));
        let new_key = Secret::new("b".repeat(48));
        let address = room("room.1@contoso.example");
        let old_token = panel_token(&old_key, &address);
        assert_eq!(
            check_panel_token(Some(&new_key), &address, Some(&old_token)),
            PanelAccess::Wrong
        );
        assert_eq!(
            check_panel_token(
                Some(&new_key),
                &address,
                Some(&panel_token(&new_key, &address))
            ),
            PanelAccess::Granted
        );
    }

    #[tokio::test]
    async fn rotating_the_stored_key_changes_every_rooms_link() {
        let store =
            calbridge_store::SqliteStore::open_in_memory(calbridge_store::SecretKey::generate())
                .await
                .expect("a store");
        let address = room("room.1@contoso.example");
        let first = panel_key(&store).await.expect("a key is made");
        let again = panel_key(&store).await.expect("the key is read");
        assert_eq!(panel_path(&first, &address), panel_path(&again, &address));
        let rotated = rotate_panel_key(&store).await.expect("a new key");
        let stored = store
            .get_secret(PANEL_KEY_SECRET)
            .await
            .expect("the store answers");
        assert_eq!(
            check_panel_token(
                stored.as_ref(),
                &address,
                Some(&panel_token(&first, &address))
            ),
            PanelAccess::Wrong
        );
        assert_eq!(
            check_panel_token(
                stored.as_ref(),
                &address,
                Some(&panel_token(&rotated, &address))
            ),
            PanelAccess::Granted
        );
        assert!(panel_path(&rotated, &address).starts_with("/panel/room.1@contoso.example?token="));
    }
}
