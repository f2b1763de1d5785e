"""Real Microsoft client libraries against the emulator, changed only in where they connect."""

import datetime
import zoneinfo

import icalendar
import msal
import pytest
import recurring_ical_events
import requests
from O365 import Account, MSGraphProtocol
from O365.utils import FileSystemTokenBackend

from conftest import EXPIRED_SECRET, SECRET, THROTTLED_USER

GRAPH_SCOPE = ["https://graph.microsoft.com/.default"]
WINDOWS_TO_IANA = {"W. Europe Standard Time": "Europe/Berlin", "Eastern Standard Time": "America/New_York", "UTC": "UTC"}


def msal_app(emulator, credential):
    # instance_discovery=False is msal's documented switch for authorities it does not know;
    # otherwise it asks login.microsoftonline.com whether the emulator's host is an authority.
    return msal.ConfidentialClientApplication(
        emulator["client_id"],
        client_credential=credential,
        authority=emulator["authority"],
        verify=emulator["ca_cert"],
        instance_discovery=False,
    )


def token(emulator):
    result = msal_app(emulator, SECRET).acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert "access_token" in result, result
    return result["access_token"]


def graph_session(emulator):
    session = requests.Session()
    session.verify = emulator["ca_cert"]
    session.headers["Authorization"] = f"Bearer {token(emulator)}"
    return session


def test_msal_gets_a_token_with_the_client_secret(emulator):
    result = msal_app(emulator, SECRET).acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert result["token_type"] == "Bearer"
    assert result["expires_in"] > 3000
    me = requests.get(f"{emulator['graph_url']}/users/ada@contoso.example", headers={"Authorization": f"Bearer {result['access_token']}"}, verify=emulator["ca_cert"])
    assert me.status_code == 200
    assert me.json()["userPrincipalName"] == "ada@contoso.example"


def test_msal_gets_a_token_with_the_certificate(emulator):
    result = msal_app(emulator, emulator["certificate"]).acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert "access_token" in result, result


def test_msal_reports_a_wrong_secret_as_entra_does(emulator):
    result = msal_app(emulator, "not-the-secret").acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert result["error_description"].startswith("AADSTS7000215:")


def test_msal_reports_an_expired_secret_as_entra_does(emulator):
    result = msal_app(emulator, EXPIRED_SECRET).acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000222]


class EmulatorProtocol(MSGraphProtocol):
    """python-o365's Graph protocol with the emulator's base URL (the only change)."""

    def __init__(self, base_url, **kwargs):
        self._protocol_url = base_url + "/"
        super().__init__(**kwargs)


def o365_account(emulator, token_folder, retries=3):
    account = Account(
        (emulator["client_id"], SECRET),
        auth_flow_type="credentials",
        tenant_id=emulator["tenant_id"],
        protocol=EmulatorProtocol(emulator["base_url"]),
        verify_ssl=emulator["ca_cert"],
        request_retries=retries,
        # Keep python-o365's token file in the test's temp folder, never in the work tree.
        token_backend=FileSystemTokenBackend(token_path=token_folder, token_filename="o365_token.txt"),
    )
    # python-o365 builds its msal client with the public cloud's authority; hand it one for the
    # emulator instead (same class, same token cache, emulator authority).
    account.con._msal_client = msal.ConfidentialClientApplication(
        emulator["client_id"],
        client_credential=SECRET,
        authority=emulator["authority"],
        token_cache=account.con.token_backend,
        verify=emulator["ca_cert"],
        instance_discovery=False,
    )
    assert account.authenticate()
    return account


def test_python_o365_lists_a_calendar_view_following_paging(emulator, tmp_path):
    account = o365_account(emulator, tmp_path)
    schedule = account.schedule(resource="ada@contoso.example")
    start = datetime.datetime(2030, 3, 1, tzinfo=datetime.timezone.utc)
    end = datetime.datetime(2030, 4, 30, tzinfo=datetime.timezone.utc)
    events = list(schedule.get_events(limit=50, batch=3, include_recurring=True, start_recurring=start, end_recurring=end))
    subjects = [event.subject for event in events]
    # 12 occurrences of the weekly series, one deleted: 11, fetched three per page.
    assert len(events) == 11, subjects
    assert "Weekly sync (moved)" in subjects
    moved = next(event for event in events if event.subject == "Weekly sync (moved)")
    assert moved.start.astimezone(datetime.timezone.utc) == datetime.datetime(2030, 3, 21, 14, 30, tzinfo=datetime.timezone.utc)


def test_requests_walks_delta_to_a_delta_link_and_sees_a_created_event(emulator):
    session = graph_session(emulator)
    url = f"{emulator['graph_url']}/users/bob@contoso.example/calendarView/delta?startDateTime=2030-03-01T00:00:00Z&endDateTime=2030-03-31T00:00:00Z"
    items, pages = [], 0
    while True:
        reply = session.get(url, headers={"Prefer": "odata.maxpagesize=2"})
        reply.raise_for_status()
        body = reply.json()
        items += body["value"]
        pages += 1
        if "@odata.deltaLink" in body:
            delta_link = body["@odata.deltaLink"]
            break
        url = body["@odata.nextLink"]
    assert pages >= 3
    assert {item["subject"] for item in items} == {"Early call", "Billing"}
    created = session.post(
        f"{emulator['graph_url']}/users/bob@contoso.example/events",
        json={"subject": "Created by requests", "start": {"dateTime": "2030-03-12T15:00:00", "timeZone": "Eastern Standard Time"}, "end": {"dateTime": "2030-03-12T15:30:00", "timeZone": "Eastern Standard Time"}},
    )
    assert created.status_code == 201, created.text
    changes = session.get(delta_link).json()
    assert [item["subject"] for item in changes["value"]] == ["Created by requests"]
    assert changes["value"][0]["start"] == {"dateTime": "2030-03-12T19:00:00.0000000", "timeZone": "UTC"}


def set_faults(emulator, faults):
    reply = requests.post(f"{emulator['admin_url']}/faults", json=faults, verify=emulator["ca_cert"])
    assert reply.status_code == 200, reply.text


def test_a_throttled_mailbox_answers_429_with_retry_after(emulator, tmp_path):
    set_faults(emulator, {"throttled_mailboxes": [THROTTLED_USER], "throttled_mailbox_retry_after_seconds": 7})
    try:
        session = graph_session(emulator)
        reply = session.get(f"{emulator['graph_url']}/users/{THROTTLED_USER}/calendarView?startDateTime=2030-03-01&endDateTime=2030-03-02")
        assert reply.status_code == 429
        assert reply.headers["Retry-After"] == "7"
        assert reply.json()["error"]["code"] == "ApplicationThrottled"
        with pytest.raises(requests.exceptions.HTTPError) as raised:
            reply.raise_for_status()
        assert raised.value.response.status_code == 429
        # python-o365 without retries raises the HTTP error it would raise against Graph.
        account = o365_account(emulator, tmp_path, retries=0)
        schedule = account.schedule(resource=THROTTLED_USER)
        day_start = datetime.datetime(2030, 3, 1, tzinfo=datetime.timezone.utc)
        day_end = datetime.datetime(2030, 3, 2, tzinfo=datetime.timezone.utc)
        with pytest.raises(requests.exceptions.HTTPError) as o365_raised:
            list(schedule.get_events(include_recurring=True, start_recurring=day_start, end_recurring=day_end))
        assert o365_raised.value.response.status_code == 429
    finally:
        set_faults(emulator, {"throttled_mailboxes": []})


# --- Recurrence expansion agrees with recurring_ical_events ------------------------------

BYDAY = {"monday": "MO", "tuesday": "TU", "wednesday": "WE", "thursday": "TH", "friday": "FR", "saturday": "SA", "sunday": "SU"}
SETPOS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}

# The exceptions the scenario declares, as (original local start, replacement or None for deleted).
EXCEPTIONS = {
    "AAMkAGseriesEurope": [
        (datetime.datetime(2030, 3, 11, 10, 0), None),
        (datetime.datetime(2030, 3, 21, 10, 0), (datetime.datetime(2030, 3, 21, 15, 30), datetime.datetime(2030, 3, 21, 16, 30), "Weekly sync (moved)")),
    ],
    "AAMkAGseriesEastern": [(datetime.datetime(2030, 3, 11, 7, 30), None)],
    "AAMkAGseriesMonthly": [],
    "AAMkAGseriesAbsolute": [],
}


def rrule_of(recurrence, zone):
    pattern, range_ = recurrence["pattern"], recurrence["range"]
    rule = {"interval": pattern["interval"]}
    kind = pattern["type"]
    if kind == "daily":
        rule["freq"] = "daily"
    elif kind == "weekly":
        rule.update(freq="weekly", byday=[BYDAY[day] for day in pattern["daysOfWeek"]], wkst=BYDAY[pattern["firstDayOfWeek"]])
    elif kind == "absoluteMonthly":
        rule.update(freq="monthly", bymonthday=pattern["dayOfMonth"])
    elif kind == "relativeMonthly":
        rule.update(freq="monthly", byday=[BYDAY[day] for day in pattern["daysOfWeek"]], bysetpos=SETPOS[pattern["index"]])
    else:
        raise AssertionError(f"pattern {kind} not covered by this proof")
    if range_["type"] == "numbered":
        rule["count"] = range_["numberOfOccurrences"]
    elif range_["type"] == "endDate":
        end_date = datetime.date.fromisoformat(range_["endDate"])
        last_moment = datetime.datetime.combine(end_date, datetime.time(23, 59, 59), tzinfo=zone)
        rule["until"] = last_moment.astimezone(datetime.timezone.utc)
    return rule


def ical_series(master):
    zone = zoneinfo.ZoneInfo(WINDOWS_TO_IANA[master["originalStartTimeZone"]])
    start_utc = datetime.datetime.fromisoformat(master["start"]["dateTime"][:19]).replace(tzinfo=datetime.timezone.utc)
    end_utc = datetime.datetime.fromisoformat(master["end"]["dateTime"][:19]).replace(tzinfo=datetime.timezone.utc)
    calendar = icalendar.Calendar()
    event = icalendar.Event()
    event.add("uid", master["iCalUId"])
    event.add("summary", master["subject"])
    event.add("dtstart", start_utc.astimezone(zone))
    event.add("dtend", end_utc.astimezone(zone))
    event.add("rrule", rrule_of(master["recurrence"], zone))
    for original, replacement in EXCEPTIONS[master["id"]]:
        if replacement is None:
            event.add("exdate", original.replace(tzinfo=zone))
    calendar.add_component(event)
    for original, replacement in EXCEPTIONS[master["id"]]:
        if replacement is not None:
            moved = icalendar.Event()
            moved.add("uid", master["iCalUId"])
            moved.add("recurrence-id", original.replace(tzinfo=zone))
            moved.add("summary", replacement[2])
            moved.add("dtstart", replacement[0].replace(tzinfo=zone))
            moved.add("dtend", replacement[1].replace(tzinfo=zone))
            calendar.add_component(moved)
    return calendar


def utc_text(moment):
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.mark.parametrize(
    "mailbox,series_id",
    [
        ("ada@contoso.example", "AAMkAGseriesEurope"),
        ("bob@contoso.example", "AAMkAGseriesEastern"),
        ("ada@contoso.example", "AAMkAGseriesMonthly"),
        ("bob@contoso.example", "AAMkAGseriesAbsolute"),
    ],
)
def test_recurrence_expansion_agrees_with_recurring_ical_events(emulator, mailbox, series_id):
    session = graph_session(emulator)
    master = session.get(f"{emulator['graph_url']}/users/{mailbox}/events/{series_id}").json()
    assert master["type"] == "seriesMaster", master
    window_start = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    window_end = datetime.datetime(2031, 3, 1, tzinfo=datetime.timezone.utc)
    url = f"{emulator['graph_url']}/users/{mailbox}/calendarView?startDateTime={utc_text(window_start)}Z&endDateTime={utc_text(window_end)}Z&$top=100"
    view = session.get(url).json()["value"]
    emulated = sorted(
        (item["start"]["dateTime"][:19], item["end"]["dateTime"][:19], item["subject"]) for item in view if item.get("seriesMasterId") == series_id
    )
    expanded = recurring_ical_events.of(ical_series(master)).between(window_start, window_end)
    expected = sorted((utc_text(event["DTSTART"].dt), utc_text(event["DTEND"].dt), str(event["SUMMARY"])) for event in expanded)
    assert len(expected) >= 4
    assert emulated == expected
