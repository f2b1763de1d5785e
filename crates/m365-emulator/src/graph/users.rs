//! `/users`, `/users/{id|upn}` and `/groups/{id}/members`.

use std::sync::Arc;

use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::{authenticate, GraphError, Identity, Need, QueryParameters};
use crate::directory::User;
use crate::state::AppState;

const DEFAULT_PROPERTIES: [&str; 11] = [
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
];

pub fn user_json(user: &User, select: Option<&[String]>) -> Value {
    let all = [
        ("businessPhones", json!([])),
        ("displayName", json!(user.display_name)),
        ("givenName", json!(user.given_name)),
        ("jobTitle", json!(user.job_title)),
        ("mail", json!(user.mail)),
        ("mobilePhone", Value::Null),
        ("officeLocation", json!(user.office_location)),
        ("preferredLanguage", Value::Null),
        ("surname", json!(user.surname)),
        ("userPrincipalName", json!(user.user_principal_name)),
        ("id", json!(user.id)),
        ("proxyAddresses", json!(user.proxy_addresses)),
        ("department", json!(user.department)),
        ("accountEnabled", json!(true)),
        ("userType", json!("Member")),
        (
            "mailNickname",
            json!(user.mail.split('@').next().unwrap_or_default()),
        ),
    ];
    let mut object = Map::new();
    for (name, value) in all {
        let wanted = match select {
            Some(names) => names
                .iter()
                .any(|selected| selected.eq_ignore_ascii_case(name)),
            None => DEFAULT_PROPERTIES.contains(&name),
        };
        if wanted {
            object.insert(name.to_string(), value);
        }
    }
    Value::Object(object)
}

fn context(state: &AppState, entity: &str, select: Option<&[String]>) -> String {
    match select {
        Some(names) => format!(
            "{}/$metadata#{entity}({})",
            state.graph_url,
            names.join(",")
        ),
        None => format!("{}/$metadata#{entity}", state.graph_url),
    }
}

fn user_not_found(key: &str) -> GraphError {
    GraphError::new(StatusCode::NOT_FOUND, "Request_ResourceNotFound", format!("Resource '{key}' does not exist or one of its queried reference-property objects are not present."))
}

/// `GET /v1.0/users/{id|upn}`
pub async fn get_user(
    State(state): State<Arc<AppState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "users.get", Need::UserRead).await?;
        let query = QueryParameters(query);
        let me = match &caller.identity {
            Identity::Delegated { user_index, .. } if key.eq_ignore_ascii_case("me") => {
                Some(*user_index)
            }
            _ => None,
        };
        let index = me
            .or_else(|| state.directory.user(&key))
            .filter(|index| state.directory.users[*index].tenant_index == caller.tenant_index)
            .ok_or_else(|| user_not_found(&key))?;
        if let Identity::Delegated { user_index, scopes } = &caller.identity {
            let only_self = !scopes.iter().any(|scope| scope.ends_with(".All"));
            if only_self && *user_index != index {
                return Err(super::Caller::denied(Need::UserRead));
            }
        }
        let select = query.select();
        let mut body = user_json(&state.directory.users[index], select.as_deref());
        body["@odata.context"] = json!(context(&state, "users/$entity", select.as_deref()));
        Ok::<_, GraphError>(Json(body).into_response())
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// A `$filter` over users, the subset of OData that directory lookups use.
enum UserFilter {
    Equals { property: String, value: String },
    StartsWith { property: String, value: String },
    ProxyAddressEquals(String),
    Or(Vec<UserFilter>),
    And(Vec<UserFilter>),
}

fn unsupported_filter() -> GraphError {
    GraphError::bad_request("Request_UnsupportedQuery", "Unsupported or invalid query filter clause specified for property. Supported: mail, userPrincipalName, id, displayName, givenName, surname (eq, startswith) and proxyAddresses/any(x:x eq '…'), joined by 'and' / 'or'.")
}

fn parse_filter(text: &str) -> Result<UserFilter, GraphError> {
    let trimmed = text.trim();
    let or_parts = split_keyword(trimmed, " or ");
    if or_parts.len() > 1 {
        return or_parts
            .iter()
            .map(|part| parse_filter(part))
            .collect::<Result<Vec<_>, _>>()
            .map(UserFilter::Or);
    }
    let and_parts = split_keyword(trimmed, " and ");
    if and_parts.len() > 1 {
        return and_parts
            .iter()
            .map(|part| parse_filter(part))
            .collect::<Result<Vec<_>, _>>()
            .map(UserFilter::And);
    }
    let unwrapped = trimmed
        .strip_prefix('(')
        .and_then(|inner| inner.strip_suffix(')'))
        .map(str::trim)
        .unwrap_or(trimmed);
    if unwrapped != trimmed {
        return parse_filter(unwrapped);
    }
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("proxyaddresses/any(") {
        // proxyAddresses/any(x:x eq 'smtp:ada@contoso.example')
        let inner = &trimmed["proxyAddresses/any(".len()..trimmed.len().saturating_sub(1)];
        let (_, condition) = inner.split_once(':').ok_or_else(unsupported_filter)?;
        let (_, value) = condition
            .split_once(" eq ")
            .ok_or_else(unsupported_filter)?;
        return Ok(UserFilter::ProxyAddressEquals(unquote(value)?));
    }
    if lower.starts_with("startswith(") {
        let inner = &trimmed["startswith(".len()..trimmed.len().saturating_sub(1)];
        let (property, value) = inner.split_once(',').ok_or_else(unsupported_filter)?;
        return Ok(UserFilter::StartsWith {
            property: property.trim().to_string(),
            value: unquote(value)?,
        });
    }
    if let Some((property, value)) = trimmed.split_once(" eq ") {
        return Ok(UserFilter::Equals {
            property: property.trim().to_string(),
            value: unquote(value)?,
        });
    }
    Err(unsupported_filter())
}

fn split_keyword<'a>(text: &'a str, keyword: &str) -> Vec<&'a str> {
    // Splits at the keyword only outside quotes and parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0usize);
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'\'' => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted => depth -= 1,
            _ if !quoted
                && depth == 0
                && text[index..].to_ascii_lowercase().starts_with(keyword) =>
            {
                parts.push(&text[start..index]);
                index += keyword.len();
                start = index;
                continue;
            }
            _ => {}
        }
        index += 1;
    }
    parts.push(&text[start..]);
    parts
}

fn unquote(value: &str) -> Result<String, GraphError> {
    let trimmed = value.trim();
    trimmed
        .strip_prefix('\'')
        .and_then(|inner| inner.strip_suffix('\''))
        .map(|inner| inner.replace("''", "'"))
        .ok_or_else(unsupported_filter)
}

fn property_value<'a>(user: &'a User, property: &str) -> Result<Option<&'a str>, GraphError> {
    Ok(match property.to_ascii_lowercase().as_str() {
        "mail" => Some(user.mail.as_str()),
        "userprincipalname" => Some(user.user_principal_name.as_str()),
        "id" => Some(user.id.as_str()),
        "displayname" => Some(user.display_name.as_str()),
        "givenname" => user.given_name.as_deref(),
        "surname" => user.surname.as_deref(),
        "department" => user.department.as_deref(),
        _ => return Err(unsupported_filter()),
    })
}

fn matches(filter: &UserFilter, user: &User) -> Result<bool, GraphError> {
    Ok(match filter {
        UserFilter::Equals { property, value } => {
            property_value(user, property)?.is_some_and(|actual| actual.eq_ignore_ascii_case(value))
        }
        UserFilter::StartsWith { property, value } => {
            property_value(user, property)?.is_some_and(|actual| {
                actual
                    .to_ascii_lowercase()
                    .starts_with(&value.to_ascii_lowercase())
            })
        }
        UserFilter::ProxyAddressEquals(value) => user
            .proxy_addresses
            .iter()
            .any(|proxy| proxy.eq_ignore_ascii_case(value)),
        UserFilter::Or(parts) => {
            let mut any = false;
            for part in parts {
                any |= matches(part, user)?;
            }
            any
        }
        UserFilter::And(parts) => {
            let mut all = true;
            for part in parts {
                all &= matches(part, user)?;
            }
            all
        }
    })
}

fn decode_skip_token(token: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("offset:")?
        .parse()
        .ok()
}

pub fn encode_skip_token(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

/// Pages a list of directory objects with `$top` and `$skiptoken`.
fn page(
    state: &AppState,
    path: &str,
    query: &QueryParameters,
    items: Vec<Value>,
    context_entity: &str,
) -> Result<Response, GraphError> {
    let top = query.top(100, 999)?;
    let offset = match query.get("$skiptoken") {
        Some(token) => decode_skip_token(token).ok_or_else(|| {
            GraphError::bad_request(
                "Directory_InvalidSkipToken",
                "The specified skip token is invalid.",
            )
        })?,
        None => 0,
    };
    let select = query.select();
    let page_items: Vec<Value> = items.iter().skip(offset).take(top).cloned().collect();
    let mut body = json!({"@odata.context": context(state, context_entity, select.as_deref()), "value": page_items});
    if offset.saturating_add(top) < items.len() {
        body["@odata.nextLink"] = json!(format!(
            "{}{path}?{}",
            state.base_url,
            query.with(&[("$skiptoken", encode_skip_token(offset.saturating_add(top)))])
        ));
    }
    Ok(Json(body).into_response())
}

/// `GET /v1.0/users`
pub async fn list_users(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "users.list", Need::UserRead).await?;
        if matches!(&caller.identity, Identity::Delegated { scopes, .. } if !scopes.iter().any(|scope| scope.ends_with(".All")))
        {
            return Err(super::Caller::denied(Need::UserRead));
        }
        let query = QueryParameters(query);
        let filter = query.get("$filter").map(parse_filter).transpose()?;
        let select = query.select();
        let mut items = Vec::new();
        for user in state
            .directory
            .users
            .iter()
            .filter(|user| user.tenant_index == caller.tenant_index)
        {
            if let Some(filter) = &filter {
                if !matches(filter, user)? {
                    continue;
                }
            }
            items.push(user_json(user, select.as_deref()));
        }
        page(&state, uri.path(), &query, items, "users")
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// Which members a members request lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemberCast {
    /// `/members`: every member, as directory objects that name their type.
    All,
    /// `/members/microsoft.graph.user`: the OData cast to the members that are users (Kiota's
    /// SDKs write it `graph.user`). Every member the emulator knows is a user, so the same
    /// people, in a collection of users.
    Users,
}

/// `GET /v1.0/groups/{id}/members`
pub async fn group_members(
    State(state): State<Arc<AppState>>,
    Path(group_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    list_members(
        &state,
        &group_id,
        uri.path(),
        &headers,
        query,
        MemberCast::All,
    )
    .await
}

/// `GET /v1.0/groups/{id}/members/microsoft.graph.user`
pub async fn group_member_users(
    State(state): State<Arc<AppState>>,
    Path(group_id): Path<String>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    list_members(
        &state,
        &group_id,
        uri.path(),
        &headers,
        query,
        MemberCast::Users,
    )
    .await
}

async fn list_members(
    state: &AppState,
    group_id: &str,
    path: &str,
    headers: &HeaderMap,
    query: Vec<(String, String)>,
    cast: MemberCast,
) -> Response {
    let result = async {
        let caller = authenticate(state, headers, "groups.members", Need::GroupRead).await?;
        let query = QueryParameters(query);
        let group_index = state
            .directory
            .group(group_id)
            .filter(|index| state.directory.groups[*index].tenant_index == caller.tenant_index)
            .ok_or_else(|| {
                GraphError::new(StatusCode::NOT_FOUND, "Request_ResourceNotFound", format!("Resource '{group_id}' does not exist or one of its queried reference-property objects are not present."))
            })?;
        let select = query.select();
        let items: Vec<Value> = state.directory.groups[group_index]
            .members
            .iter()
            .map(|member| {
                let mut item = user_json(&state.directory.users[*member], select.as_deref());
                if cast == MemberCast::All {
                    item["@odata.type"] = json!("#microsoft.graph.user");
                }
                item
            })
            .collect();
        let context_entity = match cast {
            MemberCast::All => "directoryObjects",
            MemberCast::Users => "users",
        };
        page(state, path, &query, items, context_entity)
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /v1.0/groups` with `$filter=displayName eq '…'`, to find a group by name.
pub async fn list_groups(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let result = async {
        let caller = authenticate(&state, &headers, "groups.list", Need::GroupRead).await?;
        let query = QueryParameters(query);
        let wanted_name = match query.get("$filter") {
            None => None,
            Some(filter) => match filter.split_once(" eq ") {
                Some((property, value)) if property.trim().eq_ignore_ascii_case("displayName") => {
                    Some(unquote(value)?)
                }
                _ => return Err(unsupported_filter()),
            },
        };
        let items: Vec<Value> = state
            .directory
            .groups
            .iter()
            .filter(|group| group.tenant_index == caller.tenant_index)
            .filter(|group| wanted_name.as_ref().is_none_or(|name| group.display_name.eq_ignore_ascii_case(name)))
            .map(|group| json!({"id": group.id, "displayName": group.display_name, "mailNickname": group.mail_nickname, "mailEnabled": false, "securityEnabled": true, "groupTypes": []}))
            .collect();
        page(&state, uri.path(), &query, items, "groups")
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_or_and_proxy_addresses() {
        assert!(
            matches!(parse_filter("mail eq 'a@b.c' or mail eq 'd@e.f'"), Ok(UserFilter::Or(parts)) if parts.len() == 2)
        );
        assert!(
            matches!(parse_filter("proxyAddresses/any(x:x eq 'smtp:a@b.c')"), Ok(UserFilter::ProxyAddressEquals(value)) if value == "smtp:a@b.c")
        );
        assert!(matches!(
            parse_filter("startswith(displayName,'Ad')"),
            Ok(UserFilter::StartsWith { .. })
        ));
        assert!(parse_filter("mail gt 'x'").is_err());
        assert!(
            matches!(parse_filter("mail eq 'o''brien@b.c'"), Ok(UserFilter::Equals { value, .. }) if value == "o'brien@b.c")
        );
    }
}
