"""msal's delegated flows against the emulator, unmodified but for the authority: the device code
flow, the authorization code flow with PKCE, and refresh tokens; and Graph's calendar sharing as
a delegated token meets it.

The emulator's sign-in pages stand in for the person at the browser: the tests post the same
form a person would fill in.
"""

import html.parser
import threading
import urllib.parse

import msal
import pytest
import requests

from conftest import running_emulator

APP_ID = "7d1e6a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
APP_SECRET = "delegated-proof-secret"
REDIRECT = "https://calbridge.example/oauth/callback"
MONITOR = "monitor@contoso.example"
MONITOR_PASSWORD = "Monitor-Pa55word"
SCOPES = ["https://graph.microsoft.com/Calendars.Read.Shared", "https://graph.microsoft.com/User.ReadBasic.All"]
WINDOW = {"startDateTime": "2031-01-06T00:00:00Z", "endDateTime": "2031-01-07T00:00:00Z"}

SCENARIO = f"""
[settings]
# msal waits the interval between polls; one second keeps the proof short.
device_code_interval_seconds = 1

[[tenants]]
name = "contoso"
domains = ["contoso.example"]

[[apps]]
name = "calbridge monitor"
client_id = "{APP_ID}"
secrets = [{{ value = "{APP_SECRET}" }}]
delegated_permissions = ["Calendars.Read.Shared", "User.ReadBasic.All"]
admin_consent = true
redirect_uris = ["{REDIRECT}"]
public_client = true

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
subject = "Shared with the monitor"
start = "2031-01-06T10:00:00"
duration = "1h"

[[events]]
mailbox = "bob@contoso.example"
subject = "Not shared"
start = "2031-01-06T10:00:00"
duration = "1h"
"""


@pytest.fixture(scope="module")
def delegated_emulator(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m365-emulator-delegated")
    scenario = folder / "scenario.toml"
    scenario.write_text(SCENARIO)
    with running_emulator(["--scenario", str(scenario)], folder) as ready:
        # requests lets REQUESTS_CA_BUNDLE override a session's `verify` (msal's too), so the
        # emulator's CA goes there for as long as these tests run.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("REQUESTS_CA_BUNDLE", str(ready["ca_cert"]))
            yield ready


def public_app(emulator):
    return msal.PublicClientApplication(
        APP_ID, authority=emulator["authority"], verify=emulator["ca_cert"], instance_discovery=False
    )


def confidential_app(emulator):
    return msal.ConfidentialClientApplication(
        APP_ID,
        client_credential=APP_SECRET,
        authority=emulator["authority"],
        verify=emulator["ca_cert"],
        instance_discovery=False,
    )


def enter_device_code(emulator, user_code):
    """What the person does at `verification_uri`: the code, their account, their password."""
    reply = requests.post(
        f"{emulator['base_url']}/devicelogin",
        data={"otc": user_code, "login": MONITOR, "passwd": MONITOR_PASSWORD},
        verify=emulator["ca_cert"],
        timeout=10,
    )
    assert "You have signed in" in reply.text, reply.text


class FormReader(html.parser.HTMLParser):
    """The sign-in form's action and fields, as a browser would submit them."""

    def __init__(self):
        super().__init__()
        self.action = None
        self.fields = {}

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        if tag == "form":
            self.action = attributes.get("action")
        elif tag == "input" and attributes.get("type") == "hidden":
            self.fields[attributes["name"]] = attributes.get("value", "")


def sign_in_at(emulator, auth_uri):
    """Opens msal's authorization URL, fills in the form, returns the redirect's parameters."""
    session = requests.Session()
    session.verify = emulator["ca_cert"]
    page = session.get(auth_uri, timeout=10)
    assert page.status_code == 200, page.text
    form = FormReader()
    form.feed(page.text)
    fields = dict(form.fields, login=MONITOR, passwd=MONITOR_PASSWORD)
    answer = session.post(urllib.parse.urljoin(auth_uri, form.action), data=fields, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT), location
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def graph_get(emulator, token, path, params=None):
    return requests.get(
        f"{emulator['graph_url']}{path}",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        verify=emulator["ca_cert"],
        timeout=10,
    )


def test_msal_device_flow_signs_in_the_monitor_account(delegated_emulator):
    app = public_app(delegated_emulator)
    flow = app.initiate_device_flow(scopes=SCOPES)
    assert "user_code" in flow, flow
    assert flow["user_code"] in flow["message"]
    result = {}
    polling = threading.Thread(target=lambda: result.update(app.acquire_token_by_device_flow(flow)))
    polling.start()
    enter_device_code(delegated_emulator, flow["user_code"])
    polling.join(timeout=60)
    assert "access_token" in result, result
    assert result["id_token_claims"]["preferred_username"] == MONITOR
    assert "refresh_token" in result
    accounts = app.get_accounts()
    assert [account["username"] for account in accounts] == [MONITOR]
    me = graph_get(delegated_emulator, result["access_token"], "/me")
    assert me.json()["userPrincipalName"] == MONITOR


def test_msal_authorization_code_flow_with_pkce(delegated_emulator):
    app = confidential_app(delegated_emulator)
    flow = app.initiate_auth_code_flow(scopes=SCOPES, redirect_uri=REDIRECT)
    assert flow["code_verifier"] and "code_challenge=" in flow["auth_uri"]
    auth_response = sign_in_at(delegated_emulator, flow["auth_uri"])
    assert auth_response["state"] == flow["state"]
    result = app.acquire_token_by_auth_code_flow(flow, auth_response)
    assert "access_token" in result, result
    assert result["id_token_claims"]["preferred_username"] == MONITOR
    shared = graph_get(delegated_emulator, result["access_token"], "/users/ada@contoso.example/calendarView", WINDOW)
    assert shared.status_code == 200, shared.text
    assert [event["subject"] for event in shared.json()["value"]] == ["Shared with the monitor"]


def test_msal_auth_code_flow_with_a_tampered_verifier_gets_aadsts501481(delegated_emulator):
    app = confidential_app(delegated_emulator)
    flow = app.initiate_auth_code_flow(scopes=SCOPES, redirect_uri=REDIRECT)
    auth_response = sign_in_at(delegated_emulator, flow["auth_uri"])
    flow["code_verifier"] = "x" * 43
    result = app.acquire_token_by_auth_code_flow(flow, auth_response)
    assert result.get("error") == "invalid_grant", result
    assert 501481 in result.get("error_codes", []), result


def test_msal_refreshes_silently_and_by_refresh_token(delegated_emulator):
    app = confidential_app(delegated_emulator)
    flow = app.initiate_auth_code_flow(scopes=SCOPES, redirect_uri=REDIRECT)
    first = app.acquire_token_by_auth_code_flow(flow, sign_in_at(delegated_emulator, flow["auth_uri"]))
    assert "access_token" in first, first
    account = app.get_accounts(username=MONITOR)[0]
    refreshed = app.acquire_token_silent_with_error(SCOPES, account=account, force_refresh=True)
    assert refreshed and "access_token" in refreshed, refreshed
    assert refreshed["access_token"] != first["access_token"]
    # The old refresh token still works (Entra does not revoke a used one) and rotates again.
    again = app.acquire_token_by_refresh_token(first["refresh_token"], scopes=SCOPES)
    assert "access_token" in again, again
    assert again["refresh_token"] != first["refresh_token"]


def test_msal_sees_a_revoked_grant_as_invalid_grant_50173(delegated_emulator):
    app = confidential_app(delegated_emulator)
    flow = app.initiate_auth_code_flow(scopes=SCOPES, redirect_uri=REDIRECT)
    tokens = app.acquire_token_by_auth_code_flow(flow, sign_in_at(delegated_emulator, flow["auth_uri"]))
    assert "refresh_token" in tokens, tokens
    revoked = requests.post(
        f"{delegated_emulator['admin_url']}/users/{MONITOR}/revokeSignInSessions",
        verify=delegated_emulator["ca_cert"],
        timeout=10,
    )
    assert revoked.status_code == 204
    result = app.acquire_token_by_refresh_token(tokens["refresh_token"], scopes=SCOPES)
    assert result.get("error") == "invalid_grant", result
    assert 50173 in result.get("error_codes", []), result


def test_a_delegated_token_cannot_read_a_calendar_not_shared_with_the_account(delegated_emulator):
    app = public_app(delegated_emulator)
    flow = app.initiate_device_flow(scopes=SCOPES)
    enter_device_code(delegated_emulator, flow["user_code"])
    result = app.acquire_token_by_device_flow(flow)
    assert "access_token" in result, result
    refused = graph_get(delegated_emulator, result["access_token"], "/users/bob@contoso.example/calendarView", WINDOW)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "ErrorAccessDenied"


def test_the_generated_organisation_has_a_monitor_most_people_share_with(generated_emulator, monkeypatch):
    """`--generate-users`: the ready line's monitor signs in by device code; the first person
    shares their calendar with it, the 25th does not."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(generated_emulator["ca_cert"]))
    assert generated_emulator["delegated_user"] == "graph.monitor@contoso.example"
    app = msal.PublicClientApplication(
        generated_emulator["client_id"],
        authority=generated_emulator["authority"],
        verify=generated_emulator["ca_cert"],
        instance_discovery=False,
    )
    flow = app.initiate_device_flow(scopes=SCOPES)
    reply = requests.post(
        f"{generated_emulator['base_url']}/devicelogin",
        data={
            "otc": flow["user_code"],
            "login": generated_emulator["delegated_user"],
            "passwd": generated_emulator["delegated_password"],
        },
        verify=generated_emulator["ca_cert"],
        timeout=10,
    )
    assert "You have signed in" in reply.text, reply.text
    result = app.acquire_token_by_device_flow(flow)
    assert "access_token" in result, result
    # User.ReadBasic.All lists users (group members would need GroupMember.Read.All).
    listed = graph_get(generated_emulator, result["access_token"], "/users", {"$top": "25", "$select": "userPrincipalName"})
    assert listed.status_code == 200, listed.text
    people = [user["userPrincipalName"] for user in listed.json()["value"]]
    window = {"startDateTime": "2020-01-01T00:00:00Z", "endDateTime": "2020-01-02T00:00:00Z"}
    shared = graph_get(generated_emulator, result["access_token"], f"/users/{people[0]}/calendarView", window)
    assert shared.status_code == 200, shared.text
    refused = graph_get(generated_emulator, result["access_token"], f"/users/{people[24]}/calendarView", window)
    assert refused.status_code == 403, refused.text
