//! Delegated sign-in: the device code flow, the authorization code flow with PKCE, refresh
//! tokens (rotation, inactivity, revocation, consent) and Graph's calendar sharing for
//! delegated tokens.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jiff::SignedDuration;
use m365_emulator::{EmulatorConfig, Scenario};
use serde_json::{json, Value};
use support::*;

const MONITOR_APP: &str = "55555555-5555-4555-8555-555555555555";
const CONSENT_APP: &str = "66666666-6666-4666-8666-666666666666";
const REDIRECT: &str = "https://calbridge.example/oauth/callback";
const MONITOR: &str = "monitor@contoso.example";
const MONITOR_PASSWORD: &str = "Monitor-Pa55";
const SCOPES: &str = "https://graph.microsoft.com/Calendars.Read.Shared https://graph.microsoft.com/User.ReadBasic.All offline_access openid profile";

fn scenario() -> Scenario {
    let text = format!(
        r#"
[settings]
device_code_interval_seconds = 5

[[tenants]]
name = "contoso"
id = "{TENANT_ID}"
domains = ["contoso.example"]

[[apps]]
name = "calbridge monitor"
client_id = "{MONITOR_APP}"
secrets = [{{ value = "monitor-secret" }}]
delegated_permissions = ["Calendars.Read.Shared", "User.ReadBasic.All"]
admin_consent = true
redirect_uris = ["{REDIRECT}"]
public_client = true

[[apps]]
name = "needs consent"
client_id = "{CONSENT_APP}"
secrets = [{{ value = "consent-secret" }}]
delegated_permissions = ["Calendars.Read.Shared"]
redirect_uris = ["{REDIRECT}"]

[[users]]
upn = "{MONITOR}"
password = "{MONITOR_PASSWORD}"

[[users]]
upn = "ada@contoso.example"
calendar_shared_with = ["{MONITOR}"]

[[users]]
upn = "bob@contoso.example"

[[events]]
mailbox = "ada@contoso.example"
subject = "Shared meeting"
start = "2026-06-01T10:00:00"
duration = "1h"
"#
    );
    match Scenario::from_toml_str(&text) {
        Ok(scenario) => scenario,
        Err(error) => panic!("scenario: {error}"),
    }
}

async fn harness() -> Harness {
    let mut config = EmulatorConfig::scenario(scenario());
    config.clock = manual_clock();
    config.refresh_token_max_inactive = Some(SignedDuration::from_hours(24));
    start_with(config).await
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or_default();
    URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={}", encode(value)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

fn assert_entra_error(reply: &Reply, error: &str, code: u64) {
    assert_eq!(reply.status, 400, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["error"], json!(error), "{body}");
    assert_eq!(body["error_codes"], json!([code]), "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|text| text.starts_with(&format!("AADSTS{code}: "))),
        "{body}"
    );
}

impl Harness {
    fn base(&self) -> String {
        self.emulator.ready().base_url.clone()
    }

    async fn post_form(&self, url: &str, pairs: &[(&str, &str)]) -> Reply {
        self.client
            .send(
                "POST",
                url,
                &[],
                Some(("application/x-www-form-urlencoded", form(pairs))),
            )
            .await
    }

    async fn device_code(&self) -> Value {
        let url = format!("{}/{TENANT_ID}/oauth2/v2.0/devicecode", self.base());
        let reply = self
            .post_form(&url, &[("client_id", MONITOR_APP), ("scope", SCOPES)])
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()
    }

    async fn poll(&self, device_code: &str) -> Reply {
        self.token_request(&[
            ("client_id", MONITOR_APP),
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code),
        ])
        .await
    }

    /// Signs in through the verification page, as a person at a browser would.
    async fn enter_code(&self, user_code: &str) -> Reply {
        let url = format!("{}/devicelogin", self.base());
        self.post_form(
            &url,
            &[
                ("otc", user_code),
                ("login", MONITOR),
                ("passwd", MONITOR_PASSWORD),
            ],
        )
        .await
    }

    async fn signed_in_by_device_code(&self) -> Value {
        let flow = self.device_code().await;
        let user_code = flow["user_code"].as_str().unwrap_or_default();
        let signed_in = self.enter_code(user_code).await;
        assert!(
            signed_in.text().contains("You have signed in"),
            "{}",
            signed_in.text()
        );
        let reply = self
            .poll(flow["device_code"].as_str().unwrap_or_default())
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()
    }

    async fn refresh(&self, refresh_token: &str) -> Reply {
        self.token_request(&[
            ("client_id", MONITOR_APP),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("scope", SCOPES),
        ])
        .await
    }

    fn authorize_query(&self, challenge: &str, redirect: &str) -> String {
        format!(
            "client_id={MONITOR_APP}&response_type=code&redirect_uri={}&scope={}&state=s-123&nonce=n-1&code_challenge={challenge}&code_challenge_method=S256",
            encode(redirect),
            encode(SCOPES)
        )
    }

    /// Posts the sign-in form of the authorize endpoint; returns the redirect's query pairs.
    async fn authorize(&self, client_id: &str, challenge: &str, consent: &str) -> Reply {
        let url = format!("{}/{TENANT_ID}/oauth2/v2.0/authorize", self.base());
        self.post_form(
            &url,
            &[
                ("client_id", client_id),
                ("response_type", "code"),
                ("redirect_uri", REDIRECT),
                ("scope", SCOPES),
                ("state", "s-123"),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
                ("login", MONITOR),
                ("passwd", MONITOR_PASSWORD),
                ("consent", consent),
            ],
        )
        .await
    }
}

fn redirect_parameters(reply: &Reply) -> Vec<(String, String)> {
    let location = reply.header("location").unwrap_or_default();
    let query = location
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or("");
    serde_urlencoded::from_str(query).unwrap_or_default()
}

fn parameter(pairs: &[(String, String)], name: &str) -> String {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
        .unwrap_or_default()
}

fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

#[tokio::test]
async fn the_device_code_flow_answers_pending_then_slow_down_then_tokens_for_the_signed_in_user() {
    let harness = harness().await;
    let flow = harness.device_code().await;
    assert_eq!(flow["interval"], json!(5));
    assert_eq!(flow["expires_in"], json!(900));
    let user_code = flow["user_code"].as_str().unwrap_or_default().to_string();
    let verification_uri = format!("{}/devicelogin", harness.base());
    assert_eq!(flow["verification_uri"], json!(verification_uri));
    assert!(
        flow["message"].as_str().is_some_and(
            |message| message.contains(&user_code) && message.contains(&verification_uri)
        )
    );
    let device_code = flow["device_code"].as_str().unwrap_or_default().to_string();

    assert_entra_error(
        &harness.poll(&device_code).await,
        "authorization_pending",
        70016,
    );
    // Polling again at once is faster than the interval.
    assert_entra_error(&harness.poll(&device_code).await, "slow_down", 70016);

    let wrong = harness
        .post_form(
            &verification_uri,
            &[("otc", &user_code), ("login", MONITOR), ("passwd", "wrong")],
        )
        .await;
    assert!(wrong.text().contains("AADSTS50126"), "{}", wrong.text());
    let signed_in = harness.enter_code(&user_code).await;
    assert!(
        signed_in.text().contains("You have signed in"),
        "{}",
        signed_in.text()
    );

    let reply = harness.poll(&device_code).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert!(
        body["refresh_token"]
            .as_str()
            .is_some_and(|token| !token.is_empty()),
        "{body}"
    );
    assert!(body["id_token"].as_str().is_some(), "{body}");
    let claims = claims_of(body["access_token"].as_str().unwrap_or_default());
    assert_eq!(claims["upn"], json!(MONITOR));
    assert_eq!(
        claims["scp"],
        json!("Calendars.Read.Shared User.ReadBasic.All")
    );
    assert_eq!(claims["appid"], json!(MONITOR_APP));
    let id_claims = claims_of(body["id_token"].as_str().unwrap_or_default());
    assert_eq!(id_claims["aud"], json!(MONITOR_APP));
    assert_eq!(id_claims["preferred_username"], json!(MONITOR));

    // The code is used up.
    assert_entra_error(
        &harness.poll(&device_code).await,
        "bad_verification_code",
        70000,
    );
}

#[tokio::test]
async fn a_device_code_nobody_entered_expires_after_fifteen_minutes() {
    let harness = harness().await;
    let flow = harness.device_code().await;
    let advanced = harness
        .emulator
        .clock()
        .advance(SignedDuration::from_secs(901));
    assert!(advanced.is_ok());
    let reply = harness
        .poll(flow["device_code"].as_str().unwrap_or_default())
        .await;
    assert_entra_error(&reply, "expired_token", 70019);
}

#[tokio::test]
async fn a_declined_device_sign_in_is_reported_to_the_polling_device() {
    let harness = harness().await;
    let flow = harness.device_code().await;
    let url = format!("{}/devicelogin", harness.base());
    let user_code = flow["user_code"].as_str().unwrap_or_default();
    harness
        .post_form(&url, &[("otc", user_code), ("decline", "1")])
        .await;
    let reply = harness
        .poll(flow["device_code"].as_str().unwrap_or_default())
        .await;
    assert_entra_error(&reply, "authorization_declined", 70000);
}

#[tokio::test]
async fn the_authorization_code_flow_checks_the_redirect_uri_and_the_pkce_verifier() {
    let harness = harness().await;
    let verifier = "a-long-random-verifier-of-at-least-43-characters-0123456789";
    let challenge = challenge_of(verifier);
    let page_url = format!(
        "{}/{TENANT_ID}/oauth2/v2.0/authorize?{}",
        harness.base(),
        harness.authorize_query(&challenge, REDIRECT)
    );
    let page = harness.client.send("GET", &page_url, &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("name=\"passwd\""), "{}", page.text());

    let wrong_redirect = format!(
        "{}/{TENANT_ID}/oauth2/v2.0/authorize?{}",
        harness.base(),
        harness.authorize_query(&challenge, "https://evil.example/callback")
    );
    let refused = harness.client.send("GET", &wrong_redirect, &[], None).await;
    assert_eq!(refused.status, 400);
    assert!(refused.text().contains("AADSTS50011"), "{}", refused.text());

    let redirect = harness.authorize(MONITOR_APP, &challenge, "").await;
    assert_eq!(redirect.status, 302, "{}", redirect.text());
    assert!(redirect
        .header("location")
        .is_some_and(|location| location.starts_with(REDIRECT)));
    let pairs = redirect_parameters(&redirect);
    assert_eq!(parameter(&pairs, "state"), "s-123");
    let code = parameter(&pairs, "code");

    let redeem = |verifier: String, code: String| {
        let harness = &harness;
        async move {
            harness
                .token_request(&[
                    ("client_id", MONITOR_APP),
                    ("client_secret", "monitor-secret"),
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", REDIRECT),
                    ("code_verifier", &verifier),
                    ("scope", SCOPES),
                ])
                .await
        }
    };
    let refused = redeem("not-the-verifier".to_string(), code.clone()).await;
    assert_entra_error(&refused, "invalid_grant", 501481);
    let tokens = redeem(verifier.to_string(), code.clone()).await;
    assert_eq!(tokens.status, 200, "{}", tokens.text());
    assert_eq!(
        claims_of(tokens.json()["access_token"].as_str().unwrap_or_default())["upn"],
        json!(MONITOR)
    );
    let again = redeem(verifier.to_string(), code).await;
    assert_entra_error(&again, "invalid_grant", 54005);

    let wrong_secret = harness
        .token_request(&[
            ("client_id", MONITOR_APP),
            ("client_secret", "not-the-secret"),
            ("grant_type", "refresh_token"),
            ("refresh_token", "whatever"),
        ])
        .await;
    assert_eq!(wrong_secret.status, 401);
    assert_eq!(wrong_secret.json()["error_codes"], json!([7000215]));
}

#[tokio::test]
async fn an_app_without_admin_consent_asks_the_user_and_a_declined_consent_goes_back_as_access_denied(
) {
    let harness = harness().await;
    let challenge = challenge_of("verifier-verifier-verifier-verifier-verifier-1");
    let asked = harness.authorize(CONSENT_APP, &challenge, "").await;
    assert_eq!(asked.status, 200);
    assert!(asked.text().contains("id=\"consent\""), "{}", asked.text());
    assert!(asked.text().contains("Calendars.Read.Shared"));

    let declined = harness.authorize(CONSENT_APP, &challenge, "decline").await;
    assert_eq!(declined.status, 302);
    let pairs = redirect_parameters(&declined);
    assert_eq!(parameter(&pairs, "error"), "access_denied");
    assert!(parameter(&pairs, "error_description").starts_with("AADSTS65004"));

    let accepted = harness.authorize(CONSENT_APP, &challenge, "accept").await;
    assert_eq!(accepted.status, 302);
    assert!(!parameter(&redirect_parameters(&accepted), "code").is_empty());
    // Once consented, the form no longer asks.
    let again = harness.authorize(CONSENT_APP, &challenge, "").await;
    assert_eq!(again.status, 302);
}

#[tokio::test]
async fn refresh_tokens_rotate_expire_after_inactivity_and_can_be_revoked() {
    let harness = harness().await;
    let first = harness.signed_in_by_device_code().await;
    let first_refresh = first["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    let rotated = harness.refresh(&first_refresh).await;
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let second_refresh = rotated.json()["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!second_refresh.is_empty());
    assert_ne!(second_refresh, first_refresh);
    assert_eq!(
        claims_of(rotated.json()["access_token"].as_str().unwrap_or_default())["scp"],
        json!("Calendars.Read.Shared User.ReadBasic.All")
    );

    // Unused for longer than the inactivity limit (24 h here, 90 days at Entra).
    let _ = harness
        .emulator
        .clock()
        .advance(SignedDuration::from_hours(25));
    assert_entra_error(
        &harness.refresh(&second_refresh).await,
        "invalid_grant",
        700082,
    );

    let fresh = harness.signed_in_by_device_code().await;
    let fresh_refresh = fresh["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let _ = harness
        .emulator
        .clock()
        .advance(SignedDuration::from_mins(1));
    let revoke = harness
        .client
        .send(
            "POST",
            &harness.admin(&format!("/users/{MONITOR}/revokeSignInSessions")),
            &[],
            None,
        )
        .await;
    assert_eq!(revoke.status, 204);
    assert_entra_error(
        &harness.refresh(&fresh_refresh).await,
        "invalid_grant",
        50173,
    );

    let unknown = harness.refresh("1.Anot-a-token").await;
    assert_eq!(unknown.json()["error"], json!("invalid_grant"));
}

#[tokio::test]
async fn a_refresh_after_consent_was_revoked_answers_consent_required() {
    let harness = harness().await;
    let _ = harness
        .emulator
        .clock()
        .advance(SignedDuration::from_mins(1));
    let tokens = harness.signed_in_by_device_code().await;
    let revoke = harness
        .send_json(
            "POST",
            &harness.admin("/consents/revoke"),
            "",
            &json!({"client_id": MONITOR_APP}),
        )
        .await;
    assert_eq!(revoke.status, 204);
    let reply = harness
        .refresh(tokens["refresh_token"].as_str().unwrap_or_default())
        .await;
    assert_entra_error(&reply, "invalid_grant", 65001);
    assert_eq!(reply.json()["suberror"], json!("consent_required"));
}

#[tokio::test]
async fn a_delegated_token_reads_only_calendars_shared_with_the_user_and_cannot_subscribe_to_them()
{
    let harness = harness().await;
    let tokens = harness.signed_in_by_device_code().await;
    let token = tokens["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let window = "startDateTime=2026-06-01T00:00:00Z&endDateTime=2026-06-02T00:00:00Z";

    let shared = harness
        .get(
            &harness.graph(&format!("/users/ada@contoso.example/calendarView?{window}")),
            &token,
            &[],
        )
        .await;
    assert_eq!(shared.status, 200, "{}", shared.text());
    assert_eq!(
        shared.json()["value"][0]["subject"],
        json!("Shared meeting")
    );

    let delta = harness
        .get(
            &harness.graph(&format!(
                "/users/ada@contoso.example/calendarView/delta?{window}"
            )),
            &token,
            &[],
        )
        .await;
    assert_eq!(delta.status, 200, "{}", delta.text());

    let not_shared = harness
        .get(
            &harness.graph(&format!("/users/bob@contoso.example/calendarView?{window}")),
            &token,
            &[],
        )
        .await;
    assert_eq!(not_shared.status, 403, "{}", not_shared.text());
    assert_eq!(
        not_shared.json()["error"]["code"],
        json!("ErrorAccessDenied")
    );

    let own = harness
        .get(
            &harness.graph(&format!("/me/calendarView?{window}")),
            &token,
            &[],
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.text());
    let me = harness.get(&harness.graph("/me"), &token, &[]).await;
    assert_eq!(me.json()["userPrincipalName"], json!(MONITOR));

    // Sharing ends: the next read is refused.
    assert!(harness
        .emulator
        .set_calendar_shared("ada@contoso.example", MONITOR, false));
    let unshared = harness
        .get(
            &harness.graph(&format!("/users/ada@contoso.example/calendarView?{window}")),
            &token,
            &[],
        )
        .await;
    assert_eq!(unshared.status, 403);
    assert!(harness
        .emulator
        .set_calendar_shared("ada@contoso.example", MONITOR, true));

    let subscription = harness
        .send_json(
            "POST",
            &harness.graph("/subscriptions"),
            &token,
            &json!({
                "changeType": "created,updated,deleted",
                "notificationUrl": "https://calbridge.example/notify",
                "resource": "/users/ada@contoso.example/events",
                "expirationDateTime": "2026-06-02T08:00:00Z",
            }),
        )
        .await;
    assert_eq!(subscription.status, 403, "{}", subscription.text());
    assert_eq!(
        subscription.json()["error"]["code"],
        json!("ExtensionError")
    );
}
