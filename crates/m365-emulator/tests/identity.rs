//! Entra ID endpoints: discovery, client credentials by secret and by certificate, the
//! password grant, and Entra's error answers.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jiff::SignedDuration;
use serde_json::{json, Value};
use support::*;

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or_default();
    URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(Value::Null)
}

fn assert_entra_error(reply: &Reply, status: u16, error: &str, code: u64) {
    assert_eq!(reply.status, status, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["error"], json!(error), "{body}");
    assert_eq!(body["error_codes"], json!([code]), "{body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    for field in ["timestamp", "trace_id", "correlation_id"] {
        assert!(
            body[field].as_str().is_some_and(|value| !value.is_empty()),
            "missing {field} in {body}"
        );
    }
    assert!(
        !description.contains("good-secret") && !description.contains("old-secret"),
        "a secret leaked into an error"
    );
}

/// A client assertion signed with the test key, as msal builds it.
fn client_assertion(
    algorithm: &str,
    thumbprint_header: &str,
    audience: &str,
    expires_in_seconds: i64,
    now: i64,
    key_pem: &str,
    certificate_pem: &str,
) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(certificate_pem.as_bytes())
        .map(|der| der.to_vec())
        .unwrap_or_default();
    let thumbprint = if thumbprint_header == "x5t" {
        URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            &der,
        ))
    } else {
        URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &der))
    };
    let header = json!({"alg": algorithm, "typ": "JWT", thumbprint_header: thumbprint});
    // Like msal for Python: no `nbf`, and `exp` as a float.
    let claims = json!({"aud": audience, "iss": APP_ID, "sub": APP_ID, "jti": "test-jti", "iat": now, "exp": (now + expires_in_seconds) as f64 + 0.5});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key_der = match rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes()) {
        Ok(key) => key,
        Err(error) => panic!("test key: {error}"),
    };
    let key_pair = match ring::signature::RsaKeyPair::from_pkcs8(key_der.secret_pkcs8_der()) {
        Ok(key_pair) => key_pair,
        Err(error) => panic!("test key: {error}"),
    };
    let padding: &dyn ring::signature::RsaEncoding = if algorithm == "PS256" {
        &ring::signature::RSA_PSS_SHA256
    } else {
        &ring::signature::RSA_PKCS1_SHA256
    };
    let mut signature = vec![0u8; key_pair.public().modulus_len()];
    assert!(key_pair
        .sign(
            padding,
            &ring::rand::SystemRandom::new(),
            signing_input.as_bytes(),
            &mut signature
        )
        .is_ok());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[tokio::test]
async fn openid_configuration_names_the_token_endpoint_msal_needs() {
    let harness = start().await;
    let ready = harness.emulator.ready().clone();
    assert!(ready.ca_cert.exists(), "CA file missing");
    for tenant in [TENANT_ID, "contoso.example"] {
        let reply = harness
            .client
            .send(
                "GET",
                &format!(
                    "{}/{tenant}/v2.0/.well-known/openid-configuration",
                    ready.base_url
                ),
                &[],
                None,
            )
            .await;
        assert_eq!(reply.status, 200);
        let body = reply.json();
        assert_eq!(body["token_endpoint"], json!(ready.token_url));
        assert_eq!(body["issuer"], json!(format!("{}/v2.0", ready.authority)));
        assert!(body["authorization_endpoint"]
            .as_str()
            .is_some_and(|url| url.starts_with("https://")));
    }
    let unknown = harness
        .client
        .send(
            "GET",
            &format!(
                "{}/nobody.example/v2.0/.well-known/openid-configuration",
                ready.base_url
            ),
            &[],
            None,
        )
        .await;
    assert_entra_error(&unknown, 400, "invalid_request", 90002);
}

#[tokio::test]
async fn client_secret_gives_a_graph_token_with_roles_tenant_and_expiry() {
    let harness = start().await;
    let reply = harness
        .token_request(&[
            ("client_id", APP_ID),
            ("client_secret", "good-secret"),
            ("grant_type", "client_credentials"),
            ("scope", GRAPH_SCOPE),
        ])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["token_type"], json!("Bearer"));
    assert_eq!(body["expires_in"], json!(600));
    assert!(body.get("refresh_token").is_none());
    let claims = claims_of(body["access_token"].as_str().unwrap_or_default());
    assert_eq!(claims["aud"], json!("https://graph.microsoft.com"));
    assert_eq!(claims["tid"], json!(TENANT_ID));
    assert_eq!(claims["appid"], json!(APP_ID));
    assert_eq!(
        claims["roles"],
        json!(["Calendars.ReadWrite", "User.Read.All", "Group.Read.All"])
    );
    let now = harness.emulator.clock().now().as_second();
    assert_eq!(claims["exp"].as_i64(), Some(now + 600));
}

#[tokio::test]
async fn basic_authentication_header_is_accepted_for_the_secret() {
    let harness = start().await;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{APP_ID}:good-secret"));
    let authorization = format!("Basic {basic}");
    let body = format!(
        "grant_type=client_credentials&scope={}",
        encode(GRAPH_SCOPE)
    );
    let reply = harness
        .client
        .send(
            "POST",
            &harness.emulator.ready().token_url,
            &[("authorization", authorization.as_str())],
            Some(("application/x-www-form-urlencoded", body.into_bytes())),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn wrong_expired_and_missing_credentials_answer_as_entra_does() {
    let harness = start().await;
    let request = |secret: &'static str| {
        [
            ("client_id", APP_ID),
            ("client_secret", secret),
            ("grant_type", "client_credentials"),
            ("scope", GRAPH_SCOPE),
        ]
    };
    assert_entra_error(
        &harness.token_request(&request("not-the-secret")).await,
        401,
        "invalid_client",
        7000215,
    );
    assert_entra_error(
        &harness.token_request(&request("old-secret")).await,
        401,
        "invalid_client",
        7000222,
    );
    let missing = harness
        .token_request(&[
            ("client_id", APP_ID),
            ("grant_type", "client_credentials"),
            ("scope", GRAPH_SCOPE),
        ])
        .await;
    assert_entra_error(&missing, 401, "invalid_client", 7000218);
}

#[tokio::test]
async fn unknown_app_tenant_grant_and_bad_scopes_answer_as_entra_does() {
    let harness = start().await;
    let unknown_app = harness
        .token_request(&[
            ("client_id", "55555555-5555-4555-8555-555555555555"),
            ("client_secret", "x"),
            ("grant_type", "client_credentials"),
            ("scope", GRAPH_SCOPE),
        ])
        .await;
    assert_entra_error(&unknown_app, 400, "unauthorized_client", 700016);
    let two_resources = format!("{GRAPH_SCOPE} https://outlook.office365.com/.default");
    let reply = harness
        .token_request(&[
            ("client_id", APP_ID),
            ("client_secret", "good-secret"),
            ("grant_type", "client_credentials"),
            ("scope", &two_resources),
        ])
        .await;
    assert_entra_error(&reply, 400, "invalid_scope", 28000);
    let not_default = harness
        .token_request(&[
            ("client_id", APP_ID),
            ("client_secret", "good-secret"),
            ("grant_type", "client_credentials"),
            ("scope", "https://graph.microsoft.com/Calendars.Read"),
        ])
        .await;
    assert_entra_error(&not_default, 400, "invalid_scope", 1002012);
    let grant = harness
        .token_request(&[
            ("client_id", APP_ID),
            ("client_secret", "good-secret"),
            ("grant_type", "magic"),
            ("scope", GRAPH_SCOPE),
        ])
        .await;
    assert_entra_error(&grant, 400, "unsupported_grant_type", 70003);
    let base = &harness.emulator.ready().base_url;
    let body = format!(
        "client_id={APP_ID}&client_secret=good-secret&grant_type=client_credentials&scope={}",
        encode(GRAPH_SCOPE)
    );
    let unknown_tenant = harness
        .client
        .send(
            "POST",
            &format!("{base}/fabrikam.example/oauth2/v2.0/token"),
            &[],
            Some(("application/x-www-form-urlencoded", body.into_bytes())),
        )
        .await;
    assert_entra_error(&unknown_tenant, 400, "invalid_request", 90002);
}

#[tokio::test]
async fn certificate_assertion_with_ps256_and_rs256_gives_tokens() {
    let harness = start().await;
    let now = harness.emulator.clock().now().as_second();
    let token_url = harness.emulator.ready().token_url.clone();
    let key = include_str!("fixtures/app-key.pem");
    for (algorithm, header) in [("PS256", "x5t#S256"), ("RS256", "x5t")] {
        let assertion = client_assertion(
            algorithm,
            header,
            &token_url,
            600,
            now,
            key,
            app_certificate_pem(),
        );
        let reply = harness
            .token_request(&[
                ("client_id", APP_ID),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", &assertion),
                ("grant_type", "client_credentials"),
                ("scope", GRAPH_SCOPE),
            ])
            .await;
        assert_eq!(reply.status, 200, "{algorithm}: {}", reply.text());
        let claims = claims_of(reply.json()["access_token"].as_str().unwrap_or_default());
        assert_eq!(claims["appidacr"], json!("2"), "certificate tokens say so");
    }
}

#[tokio::test]
async fn bad_certificate_assertions_are_refused() {
    let harness = start().await;
    let now = harness.emulator.clock().now().as_second();
    let token_url = harness.emulator.ready().token_url.clone();
    let key = include_str!("fixtures/app-key.pem");
    let try_assertion = |assertion: String| {
        let harness = &harness;
        async move {
            harness
                .token_request(&[
                    ("client_id", APP_ID),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", &assertion),
                    ("grant_type", "client_credentials"),
                    ("scope", GRAPH_SCOPE),
                ])
                .await
        }
    };
    let unregistered = client_assertion(
        "PS256",
        "x5t#S256",
        &token_url,
        600,
        now,
        include_str!("fixtures/other-key.pem"),
        include_str!("fixtures/other-cert.pem"),
    );
    assert_entra_error(
        &try_assertion(unregistered).await,
        401,
        "invalid_client",
        700027,
    );
    // Signed by another key but claiming the registered certificate's thumbprint.
    let forged = client_assertion(
        "PS256",
        "x5t#S256",
        &token_url,
        600,
        now,
        include_str!("fixtures/other-key.pem"),
        app_certificate_pem(),
    );
    assert_entra_error(&try_assertion(forged).await, 401, "invalid_client", 700027);
    let wrong_audience = client_assertion(
        "PS256",
        "x5t#S256",
        "https://login.microsoftonline.com/x/oauth2/v2.0/token",
        600,
        now,
        key,
        app_certificate_pem(),
    );
    assert_entra_error(
        &try_assertion(wrong_audience).await,
        401,
        "invalid_client",
        700212,
    );
    let expired = client_assertion(
        "PS256",
        "x5t#S256",
        &token_url,
        -600,
        now,
        key,
        app_certificate_pem(),
    );
    assert_entra_error(&try_assertion(expired).await, 401, "invalid_client", 700024);
}

#[tokio::test]
async fn password_grant_gives_a_delegated_token_and_checks_the_password() {
    let harness = start().await;
    let scope = "https://graph.microsoft.com/Calendars.Read openid profile offline_access";
    let good = harness
        .token_request(&[
            ("client_id", APP_ID),
            ("grant_type", "password"),
            ("username", "ada@contoso.example"),
            ("password", "ada-password"),
            ("scope", scope),
        ])
        .await;
    assert_eq!(good.status, 200, "{}", good.text());
    let claims = claims_of(good.json()["access_token"].as_str().unwrap_or_default());
    assert_eq!(claims["scp"], json!("Calendars.Read"));
    assert_eq!(claims["upn"], json!("ada@contoso.example"));
    let bad = harness
        .token_request(&[
            ("client_id", APP_ID),
            ("grant_type", "password"),
            ("username", "ada@contoso.example"),
            ("password", "guess"),
            ("scope", scope),
        ])
        .await;
    assert_entra_error(&bad, 400, "invalid_grant", 50126);
    // The delegated token reads Ada's own calendar but not Bob's.
    let token = good.json()["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let window = "startDateTime=2030-03-01T00:00:00Z&endDateTime=2030-03-02T00:00:00Z";
    let own = harness
        .get(
            &harness.graph(&format!("/users/ada@contoso.example/calendarView?{window}")),
            &token,
            &[],
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.text());
    let other = harness
        .get(
            &harness.graph(&format!("/users/bob@contoso.example/calendarView?{window}")),
            &token,
            &[],
        )
        .await;
    assert_eq!(other.status, 403);
}

#[tokio::test]
async fn token_endpoint_outage_fault_answers_503() {
    let harness = start().await;
    let mut faults = harness.emulator.faults();
    faults.token_endpoint_outage = true;
    harness.emulator.set_faults(faults);
    let reply = harness
        .token_request(&[
            ("client_id", APP_ID),
            ("client_secret", "good-secret"),
            ("grant_type", "client_credentials"),
            ("scope", GRAPH_SCOPE),
        ])
        .await;
    assert_entra_error(&reply, 503, "temporarily_unavailable", 90033);
}

#[tokio::test]
async fn graph_rejects_missing_malformed_expired_and_foreign_tokens_with_401() {
    let harness = start().await;
    let url = harness.graph("/users/ada@contoso.example");
    let missing = harness.client.send("GET", &url, &[], None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.json()["error"]["code"],
        json!("InvalidAuthenticationToken")
    );
    assert_eq!(
        missing.json()["error"]["message"],
        json!("Access token is empty.")
    );
    assert!(missing.header("www-authenticate").is_some());
    assert!(missing.json()["error"]["innerError"]["request-id"].is_string());
    let malformed = harness.get(&url, "not-a-token", &[]).await;
    assert_eq!(malformed.status, 401);
    let outlook = harness
        .token_request(&[
            ("client_id", APP_ID),
            ("client_secret", "good-secret"),
            ("grant_type", "client_credentials"),
            ("scope", "https://outlook.office365.com/.default"),
        ])
        .await;
    let outlook_token = outlook.json()["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let wrong_audience = harness.get(&url, &outlook_token, &[]).await;
    assert_eq!(wrong_audience.status, 401);
    assert!(wrong_audience.json()["error"]["message"]
        .as_str()
        .is_some_and(|message| message.contains("Invalid audience")));
    let token = harness.token().await;
    assert_eq!(harness.get(&url, &token, &[]).await.status, 200);
    // Lifetime 600 s plus Graph's five minutes of skew: still fine at 899 s, expired at 900 s.
    assert!(harness
        .emulator
        .clock()
        .advance(SignedDuration::from_secs(899))
        .is_ok());
    assert_eq!(harness.get(&url, &token, &[]).await.status, 200);
    assert!(harness
        .emulator
        .clock()
        .advance(SignedDuration::from_secs(1))
        .is_ok());
    let expired = harness.get(&url, &token, &[]).await;
    assert_eq!(expired.status, 401);
    assert_eq!(
        expired.json()["error"]["message"],
        json!("Lifetime validation failed, the token is expired.")
    );
}

#[tokio::test]
async fn graph_answers_403_when_the_role_is_missing() {
    let harness = start().await;
    let token = harness
        .token_for(USER_ONLY_APP_ID, "directory-secret")
        .await;
    let calendar = harness.get(&harness.graph("/users/ada@contoso.example/calendarView?startDateTime=2030-03-01&endDateTime=2030-03-02"), &token, &[]).await;
    assert_eq!(calendar.status, 403);
    assert_eq!(calendar.json()["error"]["code"], json!("ErrorAccessDenied"));
    let members = harness
        .get(
            &harness.graph(&format!("/groups/{PHONES_GROUP_ID}/members")),
            &token,
            &[],
        )
        .await;
    assert_eq!(members.status, 403);
    assert_eq!(
        members.json()["error"]["code"],
        json!("Authorization_RequestDenied")
    );
}
