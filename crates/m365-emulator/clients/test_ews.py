"""exchangelib against the emulator's EWS, configured as it would be for an on-premises Exchange:
NTLM credentials, the EWS URL (or Autodiscover), impersonation for the service account."""

import pytest
import requests
from exchangelib import DELEGATE, IMPERSONATION, NTLM, Account, Configuration, Credentials, EWSDateTime, EWSTimeZone
from exchangelib.errors import ErrorImpersonateUserDenied, ErrorNameResolutionNoResults
from exchangelib.protocol import BaseProtocol

from conftest import ADA_PASSWORD, SERVICE_PASSWORD, SERVICE_USER

UTC = EWSTimeZone("UTC")


@pytest.fixture(autouse=True)
def fresh_protocol_cache():
    # exchangelib caches a protocol per endpoint and credentials; keep tests independent.
    yield
    BaseProtocol.close_all() if hasattr(BaseProtocol, "close_all") else None


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
