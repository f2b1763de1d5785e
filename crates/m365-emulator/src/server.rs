//! The HTTPS listener and the route table.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::ews::auth::ConnectionState;
use crate::ews::autodiscover::PlainHttp;
use crate::graph::{
    batch, calendar_view, delta, events, places, schedule, subscriptions, users, GraphError,
};
use crate::state::AppState;
use crate::{admin, identity};

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(identity::openid_configuration),
        )
        .route("/{tenant}/oauth2/v2.0/token", post(identity::token))
        .route(
            "/{tenant}/oauth2/v2.0/devicecode",
            post(crate::signin::device_code),
        )
        .route(
            "/{tenant}/oauth2/v2.0/authorize",
            get(crate::signin::authorize_page).post(crate::signin::authorize_submit),
        )
        .route(
            "/devicelogin",
            get(crate::signin::device_login_page).post(crate::signin::device_login_submit),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(identity::keys))
        .route(
            "/common/discovery/instance",
            get(identity::instance_discovery),
        )
        .route("/v1.0/users", get(users::list_users))
        .route("/v1.0/users/{user}", get(users::get_user))
        .route("/v1.0/groups", get(users::list_groups))
        .route("/v1.0/places/{place}", get(places::list_or_get))
        .route(
            "/v1.0/places/{list}/{cast}/rooms",
            get(places::rooms_of_list),
        )
        .route("/v1.0/groups/{group}/members", get(users::group_members))
        .route(
            "/v1.0/groups/{group}/members/microsoft.graph.user",
            get(users::group_member_users),
        )
        .route(
            "/v1.0/users/{user}/calendarView",
            get(calendar_view::calendar_view),
        )
        .route(
            "/v1.0/users/{user}/calendar/calendarView",
            get(calendar_view::calendar_view),
        )
        .route(
            "/v1.0/users/{user}/calendarView/delta",
            get(delta::calendar_view_delta),
        )
        .route(
            "/v1.0/users/{user}/calendar/calendarView/delta",
            get(delta::calendar_view_delta),
        )
        .route(
            "/v1.0/users/{user}/calendar/getSchedule",
            post(schedule::get_schedule),
        )
        .route(
            "/v1.0/users/{user}/events",
            get(events::list_events).post(events::create),
        )
        .route(
            "/v1.0/users/{user}/calendar/events",
            get(events::list_events).post(events::create),
        )
        .route(
            "/v1.0/users/{user}/events/{event}",
            get(events::get_event)
                .patch(events::update)
                .delete(events::delete),
        )
        .route(
            "/v1.0/users/{user}/calendar/events/{event}",
            get(events::get_event)
                .patch(events::update)
                .delete(events::delete),
        )
        .route(
            "/v1.0/users/{user}/events/{event}/decline",
            post(events::decline),
        )
        .route(
            "/v1.0/users/{user}/calendar/events/{event}/decline",
            post(events::decline),
        )
        .route("/v1.0/$batch", post(batch::batch))
        .route(
            "/v1.0/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/v1.0/subscriptions/{id}",
            get(subscriptions::get)
                .patch(subscriptions::update)
                .delete(subscriptions::delete),
        )
        .route(
            "/EWS/Exchange.asmx",
            axum::routing::any(crate::ews::endpoint),
        )
        .route(
            "/autodiscover/autodiscover.xml",
            axum::routing::any(crate::ews::autodiscover::pox),
        )
        .route(
            "/autodiscover/autodiscover.json/v1.0/{email}",
            get(crate::ews::autodiscover::json_v2),
        )
        .merge(admin::router())
        .fallback(fallback)
        .with_state(state)
}

async fn fallback(uri: Uri) -> Response {
    let path = uri.path();
    if let Some(rest) = path.strip_prefix("/v1.0/") {
        let segment = rest.split('/').next_back().unwrap_or(rest);
        return GraphError::bad_request(
            "BadRequest",
            format!("Resource not found for the segment '{segment}'."),
        )
        .into_response();
    }
    (StatusCode::NOT_FOUND, "Not found").into_response()
}

/// The OData functions the emulator serves. OData lets a client call a function without
/// parameters as `delta()` as well as `delta`, and Graph answers both; Microsoft's Kiota-generated
/// SDKs (msgraph-sdk for Python, Go, PHP) always send the parenthesised form.
const FUNCTIONS: [&str; 1] = ["delta"];

/// The OData type casts the emulator serves, by their full name. Graph also takes them without
/// the `microsoft.` namespace prefix (`graph.user`), which is how Kiota's SDKs write them.
const CASTS: [&str; 1] = ["microsoft.graph.user"];

/// `graph.user` or `microsoft.graph.user` (any case) as the cast's full name.
fn type_cast(segment: &str) -> Option<&'static str> {
    CASTS.iter().copied().find(|cast| {
        cast.eq_ignore_ascii_case(segment)
            || cast
                .strip_prefix("microsoft.")
                .is_some_and(|short| short.eq_ignore_ascii_case(segment))
    })
}

/// `delta()` (or `delta%28%29`, as some HTTP clients escape it) as the bare function name, if the
/// segment calls one of [`FUNCTIONS`] without parameters.
fn function_call(segment: &str) -> Option<&'static str> {
    let name = segment
        .strip_suffix("()")
        .or_else(|| segment.strip_suffix("%28%29"))?;
    FUNCTIONS
        .iter()
        .find(|function| function.eq_ignore_ascii_case(name))
        .copied()
}

/// Graph's paths are case-insensitive (`calendarview` works as well as `calendarView`), and
/// some clients send a trailing slash; routing is exact, so known segments are normalised, a
/// function called as `delta()` becomes the bare `delta`, and a cast its full name.
pub fn normalize_path(path_and_query: &str) -> String {
    const KNOWN: [&str; 13] = [
        "v1.0",
        "users",
        "groups",
        "members",
        "calendarView",
        "calendar",
        "events",
        "decline",
        "delta",
        "getSchedule",
        "subscriptions",
        "$batch",
        "_emulator",
    ];
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let trimmed = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let normalized: Vec<String> = trimmed
        .split('/')
        .map(|segment| {
            KNOWN
                .iter()
                .find(|known| known.eq_ignore_ascii_case(segment))
                .copied()
                .or_else(|| function_call(segment))
                .or_else(|| type_cast(segment))
                .map(str::to_string)
                .unwrap_or_else(|| segment.to_string())
        })
        .collect();
    let mut result = normalized.join("/");
    // `/me` is the signed-in user of a delegated token: `/users/me` resolves it.
    if result.eq_ignore_ascii_case("/v1.0/me")
        || result.to_ascii_lowercase().starts_with("/v1.0/me/")
    {
        result = format!("/v1.0/users/me{}", &result["/v1.0/me".len()..]);
    }
    // `users('ada@contoso.example')` is the same as `users/ada@contoso.example`.
    if let Some(start) = result.find("/users('") {
        if let Some(end_offset) = result[start..].find("')") {
            let key = result[start + 8..start + end_offset].to_string();
            result = format!(
                "{}/users/{key}{}",
                &result[..start],
                &result[start + end_offset + 2..]
            );
        }
    }
    if let Some(query) = query {
        result.push('?');
        result.push_str(query);
    }
    result
}

/// EWS and Autodiscover paths are case-insensitive (`/ews/exchange.asmx` is common).
fn normalize_exchange_path(path_and_query: &str) -> Option<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let lower = path.trim_end_matches('/').to_ascii_lowercase();
    let fixed = if lower == "/ews/exchange.asmx" {
        "/EWS/Exchange.asmx".to_string()
    } else if lower == "/autodiscover/autodiscover.xml" {
        "/autodiscover/autodiscover.xml".to_string()
    } else if lower.starts_with("/autodiscover/autodiscover.json/v1.0/") {
        format!(
            "/autodiscover/autodiscover.json/v1.0/{}",
            &path["/autodiscover/autodiscover.json/v1.0/".len()..]
        )
    } else {
        return None;
    };
    Some(match query {
        Some(query) => format!("{fixed}?{query}"),
        None => fixed,
    })
}

fn normalize_uri(uri: &Uri) -> Uri {
    if let Some(fixed) = uri
        .path_and_query()
        .and_then(|value| normalize_exchange_path(value.as_str()))
    {
        if let Ok(parsed) = fixed.parse() {
            return parsed;
        }
    }
    let path_and_query = uri
        .path_and_query()
        .map(|value| value.as_str())
        .unwrap_or("/");
    normalize_path(path_and_query)
        .parse()
        .unwrap_or_else(|_| uri.clone())
}

/// Accepts connections until `shutdown` turns true. `channel_binding` is the binding hash of
/// the certificate the EWS site has (Extended Protection checks logons against it); behind a
/// TLS-terminating load balancer that is not the certificate `acceptor` shows.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    channel_binding: [u8; 16],
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let Some(stream) = accept(&listener, &mut shutdown).await else {
            break;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let connection_shutdown = shutdown.clone();
        tokio::spawn(async move {
            // A client that opens a socket and never finishes the handshake must not hold a task forever.
            let Ok(Ok(tls_stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
            else {
                return;
            };
            serve_connection(
                tls_stream,
                router,
                ConnectionState::over_tls(channel_binding),
                false,
                connection_shutdown,
            )
            .await;
        });
    }
}

/// The plain-http listener: same routes, requests marked [`PlainHttp`].
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let Some(stream) = accept(&listener, &mut shutdown).await else {
            break;
        };
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            ConnectionState::default(),
            true,
            shutdown.clone(),
        ));
    }
}

/// The next connection, or None once `shutdown` turns true.
async fn accept(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<tokio::net::TcpStream> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return None,
        };
        let Ok((stream, _peer)) = accepted else {
            continue;
        };
        // Without this, a small write that follows another (a streaming envelope after the
        // headers, a notification after a keep-alive) waits for the client's delayed ACK:
        // about 40 ms of latency nobody asked for.
        let _ = stream.set_nodelay(true);
        return Some(stream);
    }
}

/// Serves one connection's requests (HTTP/1.1 keep-alive) until it ends or `shutdown` turns
/// true; with `plain`, requests are marked [`PlainHttp`].
async fn serve_connection<Io>(
    io: Io,
    router: Router,
    connection_state: ConnectionState,
    plain: bool,
    mut shutdown: watch::Receiver<bool>,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection_state = Arc::new(connection_state);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        let connection_state = Arc::clone(&connection_state);
        async move {
            let (mut parts, body) = request.into_parts();
            parts.uri = normalize_uri(&parts.uri);
            parts.extensions.insert(connection_state);
            if plain {
                parts.extensions.insert(PlainHttp);
            }
            router
                .oneshot(Request::from_parts(parts, Body::new(body)))
                .await
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_case_and_parentheses() {
        assert_eq!(
            normalize_path("/v1.0/Users/ada@x/calendarview?startDateTime=a"),
            "/v1.0/users/ada@x/calendarView?startDateTime=a"
        );
        assert_eq!(
            normalize_path("/v1.0/users('ada@x')/calendar/getschedule"),
            "/v1.0/users/ada@x/calendar/getSchedule"
        );
        assert_eq!(
            normalize_path("/v1.0/subscriptions/"),
            "/v1.0/subscriptions"
        );
    }

    #[test]
    fn a_function_called_with_parentheses_is_the_bare_function() {
        assert_eq!(
            normalize_path("/v1.0/users/ada%40x/calendarView/delta()?startDateTime=a"),
            "/v1.0/users/ada%40x/calendarView/delta?startDateTime=a"
        );
        assert_eq!(
            normalize_path("/v1.0/users('ada@x')/calendar/calendarview/Delta%28%29"),
            "/v1.0/users/ada@x/calendar/calendarView/delta"
        );
        // Only functions the emulator serves, and only without parameters.
        assert_eq!(
            normalize_path("/v1.0/users/ada@x/calendarView/delta(token='latest')"),
            "/v1.0/users/ada@x/calendarView/delta(token='latest')"
        );
        assert_eq!(
            normalize_path("/v1.0/users/ada@x/events/instances()"),
            "/v1.0/users/ada@x/events/instances()"
        );
    }

    #[test]
    fn a_type_cast_is_named_in_full() {
        assert_eq!(
            normalize_path("/v1.0/groups/g/members/graph.user?$top=2"),
            "/v1.0/groups/g/members/microsoft.graph.user?$top=2"
        );
        assert_eq!(
            normalize_path("/v1.0/groups/g/members/Microsoft.Graph.User"),
            "/v1.0/groups/g/members/microsoft.graph.user"
        );
    }
}
