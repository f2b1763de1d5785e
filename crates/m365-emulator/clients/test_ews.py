"""exchangelib against the emulator's EWS, configured as it would be for an on-premises Exchange:
NTLM credentials, the EWS URL (or Autodiscover), impersonation for the service account; and as
for Exchange Online / hybrid: an app-only OAuth token from msal with full_access_as_app.

Every test here runs with Extended Protection set to `require`, as Exchange 2019 CU14 and later
do by default: exchangelib's NTLM (requests_ntlm on pyspnego) sends the TLS channel binding and a
MIC, and the emulator checks both."""

import base64
import json

import msal
import pytest
import requests
from exchangelib import (
    DELEGATE,
    IMPERSONATION,
    NTLM,
    OAUTH2,
    Account,
    Configuration,
    Credentials,
    EWSDateTime,
    EWSTimeZone,
    Identity,
    OAuth2AuthorizationCodeCredentials,
    close_connections,
)
from exchangelib.errors import ErrorImpersonateUserDenied, ErrorNameResolutionNoResults, UnauthorizedError
from requests_ntlm import HttpNtlmAuth

from conftest import ADA_PASSWORD, EWS_APP_ID, EWS_APP_SECRET, SERVICE_PASSWORD, SERVICE_USER

UTC = EWSTimeZone("UTC")
EXCHANGE_ONLINE_SCOPE = ["https://outlook.office365.com/.default"]
GRAPH_SCOPE = ["https://graph.microsoft.com/.default"]


def set_faults(emulator, faults):
    reply = requests.post(f"{emulator['admin_url']}/faults", json=faults, verify=emulator["ca_cert"])
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.fixture(autouse=True, scope="module")
def extended_protection_required(emulator):
    assert set_faults(emulator, {"ews_extended_protection": "require"})["ews_extended_protection"] == "require"
    yield
    set_faults(emulator, {"ews_extended_protection": "none"})


@pytest.fixture(autouse=True)
def fresh_protocol_cache():
    # exchangelib caches a protocol per endpoint and credentials; keep tests independent.
    yield
    close_connections()


def configuration(emulator, username, password, auth_type=None):
    # auth_type=None lets exchangelib probe the endpoint's WWW-Authenticate headers as it does
    # against a real server (it picks NTLM there).
    return Configuration(
        service_endpoint=emulator["ews_url"],
        credentials=Credentials(username, password),
        auth_type=auth_type,
    )


def window():
    start = EWSDateTime(2030, 3, 1, tzinfo=UTC)
    end = EWSDateTime(2030, 4, 1, tzinfo=UTC)
    return start, end


def test_exchangelib_reads_a_calendar_view_with_ntlm_as_the_mailbox_owner(emulator):
    config = configuration(emulator, "CONTOSO\\ada", ADA_PASSWORD)
    account = Account("ada@contoso.example", config=config, autodiscover=False, access_type=DELEGATE)
    assert account.protocol.auth_type == NTLM
    start, end = window()
    items = list(account.calendar.view(start=start, end=end))
    subjects = sorted(item.subject for item in items)
    # The weekly series (Mondays and Thursdays) in March 2030: 8 occurrences, one deleted, one moved.
    assert subjects.count("Weekly sync") == 6, subjects
    assert "Weekly sync (moved)" in subjects
    moved = next(item for item in items if item.subject == "Weekly sync (moved)")
    assert moved.start == EWSDateTime(2030, 3, 21, 14, 30, tzinfo=UTC)
    assert moved.type == "Exception"
    assert all(item.legacy_free_busy_status == "Busy" for item in items)


def test_exchangelib_impersonates_a_mailbox_with_the_service_account(emulator):
    config = configuration(emulator, SERVICE_USER, SERVICE_PASSWORD, auth_type=NTLM)
    account = Account("bob@contoso.example", config=config, autodiscover=False, access_type=IMPERSONATION)
    start, end = window()
    items = list(account.calendar.view(start=start, end=end).only("subject", "start", "end", "type"))
    subjects = {item.subject for item in items}
    # (Another proof may have added "Created by requests" through Graph: it shows here too.)
    assert {"Early call", "Billing"} <= subjects, subjects
    early = sorted(item.start for item in items if item.subject == "Early call")
    # Every second day 07:30 New York from 7 March to 20 March, 11 March deleted; DST on 10 March.
    assert early[0] == EWSDateTime(2030, 3, 7, 12, 30, tzinfo=UTC)
    assert EWSDateTime(2030, 3, 13, 11, 30, tzinfo=UTC) in early
    assert len(early) == 6


def test_impersonation_without_the_right_is_denied(emulator):
    config = configuration(emulator, "ada@contoso.example", ADA_PASSWORD, auth_type=NTLM)
    account = Account("bob@contoso.example", config=config, autodiscover=False, access_type=IMPERSONATION)
    start, end = window()
    with pytest.raises(ErrorImpersonateUserDenied):
        list(account.calendar.view(start=start, end=end))


def test_exchangelib_resolves_names(emulator):
    config = configuration(emulator, SERVICE_USER, SERVICE_PASSWORD, auth_type=NTLM)
    account = Account("ada@contoso.example", config=config, autodiscover=False, access_type=IMPERSONATION)
    # Protocol-level services need the server version, which exchangelib guesses on first use.
    assert account.protocol.version.build.major_version == 15
    [mailbox] = account.protocol.resolve_names(["smtp:ada@contoso.example"])
    assert mailbox.email_address == "ada@contoso.example"
    assert mailbox.name == "Ada Lovelace"
    [by_name] = account.protocol.resolve_names(["Bob"])
    assert by_name.email_address == "bob@contoso.example"
    [missing] = account.protocol.resolve_names(["nobody@contoso.example"])
    assert isinstance(missing, ErrorNameResolutionNoResults)


def test_exchangelib_gets_availability(emulator):
    config = configuration(emulator, SERVICE_USER, SERVICE_PASSWORD, auth_type=NTLM)
    account = Account("ada@contoso.example", config=config, autodiscover=False, access_type=IMPERSONATION)
    start = EWSDateTime(2030, 3, 4, 0, 0, tzinfo=UTC)
    end = EWSDateTime(2030, 3, 5, 0, 0, tzinfo=UTC)
    views = list(account.protocol.get_free_busy_info(
        accounts=[(account, "Required", False), ("bob@contoso.example", "Required", False)],
        start=start,
        end=end,
        merged_free_busy_interval=60,
        requested_view="DetailedMerged",
    ))
    assert len(views) == 2
    ada, bob = views
    # Weekly sync 10:00–11:00 Berlin (09:00–10:00 UTC) on Monday 4 March 2030.
    assert ada.merged == "000000000200000000000000", ada.merged
    [event] = ada.calendar_events
    assert event.start == EWSDateTime(2030, 3, 4, 9, 0, tzinfo=UTC)
    assert event.busy_type == "Busy"
    # The service account asks without impersonation (a protocol-level call), so it holds
    # Exchange's default "free/busy time only" permission: no subject, location or details.
    assert event.details is None
    assert bob.merged == "0" * 24
    assert ada.working_hours


def test_wrong_password_is_refused(emulator):
    config = configuration(emulator, "CONTOSO\\ada", "not-the-password", auth_type=NTLM)
    account = Account("ada@contoso.example", config=config, autodiscover=False, access_type=DELEGATE)
    start, end = window()
    with pytest.raises(Exception) as raised:
        list(account.calendar.view(start=start, end=end))
    assert "401" in str(raised.value) or "Unauthorized" in type(raised.value).__name__ or "credentials" in str(raised.value).lower()


def test_ntlm_with_channel_binding_passes_and_without_it_is_refused_when_required(emulator):
    body = '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"><s:Body><m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder></s:Body></s:Envelope>'
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    refusals_before = counter(emulator, "ews.channel_binding_refusals")
    bound = requests.post(emulator["ews_url"], data=body, headers=headers, auth=HttpNtlmAuth("CONTOSO\\ada", ADA_PASSWORD), verify=emulator["ca_cert"])
    assert bound.status_code == 200, bound.text
    # The same client with its channel binding switched off, as an NTLM stack from before
    # Extended Protection: refused with a plain 401, as IIS does.
    unbound = requests.post(emulator["ews_url"], data=body, headers=headers, auth=HttpNtlmAuth("CONTOSO\\ada", ADA_PASSWORD, send_cbt=False), verify=emulator["ca_cert"])
    assert unbound.status_code == 401
    assert counter(emulator, "ews.channel_binding_refusals") == refusals_before + 1
    # With `allow`, a client without a binding gets in.
    set_faults(emulator, {"ews_extended_protection": "allow"})
    try:
        allowed = requests.post(emulator["ews_url"], data=body, headers=headers, auth=HttpNtlmAuth("CONTOSO\\ada", ADA_PASSWORD, send_cbt=False), verify=emulator["ca_cert"])
        assert allowed.status_code == 200, allowed.text
    finally:
        set_faults(emulator, {"ews_extended_protection": "require"})


def test_basic_auth_and_case_insensitive_path_work_with_requests(emulator):
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
        '<s:Header><t:RequestServerVersion Version="Exchange2016"/></s:Header>'
        '<s:Body><m:ResolveNames ReturnFullContactData="false"><m:UnresolvedEntry>Ada</m:UnresolvedEntry></m:ResolveNames></s:Body></s:Envelope>'
    )
    url = emulator["ews_url"].replace("/EWS/Exchange.asmx", "/ews/exchange.asmx")
    reply = requests.post(url, data=body, auth=("ada@contoso.example", ADA_PASSWORD), headers={"Content-Type": "text/xml"}, verify=emulator["ca_cert"])
    assert reply.status_code == 200, reply.text
    assert "<t:EmailAddress>ada@contoso.example</t:EmailAddress>" in reply.text
    refused = requests.post(url, data=body, auth=("ada@contoso.example", "wrong"), verify=emulator["ca_cert"])
    assert refused.status_code == 401
    assert "NTLM" in refused.headers.get("WWW-Authenticate", "")


# --- OAuth (Exchange Online / hybrid): app-only tokens with full_access_as_app -------------------


def app_token(emulator, scopes):
    # msal against the emulator's authority, as test_clients.py does (instance_discovery=False
    # keeps msal from asking login.microsoftonline.com about the authority).
    app = msal.ConfidentialClientApplication(
        EWS_APP_ID,
        client_credential=EWS_APP_SECRET,
        authority=emulator["authority"],
        verify=emulator["ca_cert"],
        instance_discovery=False,
    )
    result = app.acquire_token_for_client(scopes=scopes)
    assert "access_token" in result, result
    return result


def claims(access_token):
    payload = access_token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def oauth_configuration(emulator, token, identity):
    # exchangelib fetches tokens itself only from login.microsoftonline.com. Handing it the msal
    # token as `access_token` with no client id or secret makes it use that token as is (no
    # fetch, no refresh URL), so nothing leaves this machine. `identity` is the mailbox that
    # protocol-level calls (the version probe, ResolveNames) impersonate: Exchange Online wants
    # the ExchangeImpersonation header on every request made with an app-only token.
    credentials = OAuth2AuthorizationCodeCredentials(
        access_token={"access_token": token["access_token"], "token_type": token["token_type"], "expires_in": token["expires_in"]},
        identity=Identity(primary_smtp_address=identity),
    )
    return Configuration(service_endpoint=emulator["ews_url"], credentials=credentials, auth_type=OAUTH2)


def counter(emulator, name):
    reply = requests.get(f"{emulator['admin_url']}/counters?by_mailbox=false", verify=emulator["ca_cert"])
    assert reply.status_code == 200, reply.text
    return reply.json()["by_kind"].get(name, 0)


def test_exchangelib_reads_a_calendar_view_and_resolves_names_with_an_app_only_oauth_token(emulator):
    token = app_token(emulator, EXCHANGE_ONLINE_SCOPE)
    token_claims = claims(token["access_token"])
    assert token_claims["aud"] == "https://outlook.office365.com"
    assert "full_access_as_app" in token_claims["roles"]
    failures = counter(emulator, "ews.auth_failures")
    # Every request of an app-only token needs ExchangeImpersonation, the version probe included.
    missing_header = counter(emulator, "ews.impersonation_header_missing")

    config = oauth_configuration(emulator, token, "bob@contoso.example")
    account = Account("bob@contoso.example", config=config, autodiscover=False, access_type=IMPERSONATION)
    assert account.protocol.auth_type == OAUTH2
    start, end = window()
    items = list(account.calendar.view(start=start, end=end).only("subject", "start", "end", "type"))
    subjects = {item.subject for item in items}
    assert {"Early call", "Billing"} <= subjects, subjects
    early = sorted(item.start for item in items if item.subject == "Early call")
    assert early[0] == EWSDateTime(2030, 3, 7, 12, 30, tzinfo=UTC)
    assert len(early) == 6

    [ada] = account.protocol.resolve_names(["Ada"])
    assert ada.email_address == "ada@contoso.example"
    assert ada.name == "Ada Lovelace"
    [missing] = account.protocol.resolve_names(["nobody@contoso.example"])
    assert isinstance(missing, ErrorNameResolutionNoResults)
    assert counter(emulator, "ews.auth_failures") == failures
    assert counter(emulator, "ews.impersonation_header_missing") == missing_header


def test_ews_refuses_a_graph_token_with_401_and_exchangelib_reports_unauthorized(emulator):
    # The same app, so the token even carries full_access_as_app: only its audience is wrong.
    token = app_token(emulator, GRAPH_SCOPE)
    assert claims(token["access_token"])["aud"] == "https://graph.microsoft.com"
    failures = counter(emulator, "ews.auth_failures")

    config = oauth_configuration(emulator, token, "bob@contoso.example")
    with pytest.raises(UnauthorizedError):
        account = Account("bob@contoso.example", config=config, autodiscover=False, access_type=IMPERSONATION)
        start, end = window()
        list(account.calendar.view(start=start, end=end))
    assert counter(emulator, "ews.auth_failures") > failures

    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
        '<s:Header><t:RequestServerVersion Version="Exchange2016"/></s:Header>'
        '<s:Body><m:ResolveNames ReturnFullContactData="false"><m:UnresolvedEntry>Ada</m:UnresolvedEntry></m:ResolveNames></s:Body></s:Envelope>'
    )
    refused = requests.post(
        emulator["ews_url"],
        data=body,
        headers={"Content-Type": "text/xml", "Authorization": f"Bearer {token['access_token']}"},
        verify=emulator["ca_cert"],
    )
    assert refused.status_code == 401
    assert "Bearer" in refused.headers.get("WWW-Authenticate", "")
    assert refused.headers.get("x-ms-diagnostics", "").startswith("2000008;")
