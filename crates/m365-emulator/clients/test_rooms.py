"""Rooms on both protocols, judged by real clients: exchangelib's GetRoomLists / GetRooms answer the
lists and rooms Graph's places API shows (read with requests), exchangelib declines a meeting in
a room's calendar as the impersonated room, and requests declines one through Graph's
`event: decline` (refused 403 without Calendars.ReadWrite). Each time the meeting leaves the
room's calendar and the organizer's copy shows the room's answer. A meeting Ada books through
Graph with a room among its attendees is processed as the room's calendar processing says
(Exchange's defaults: accepted, the organizer's name for a subject, no body, no private flag; a
conflicting request declined; Ada's delete leaves the room's copy cancelled).

The scenario is this module's own (rooms in two buildings, meetings booked in them in May 2030),
so the generated calendars and the hour never matter."""

import os

import msal
import pytest
import requests
from exchangelib import DELEGATE, IMPERSONATION, NTLM, Account, Configuration, Credentials, EWSDateTime, EWSTimeZone, close_connections
from exchangelib.errors import ErrorNameResolutionNoResults
from exchangelib.items import SEND_ONLY

from conftest import running_emulator

SECRET = "python-rooms-secret"
READER_ID = "5a6b7c8d-1e2f-4a3b-9c4d-5e6f708192a3"
READER_SECRET = "python-rooms-reader-secret"
ADA_PASSWORD = "Ada-Rooms-Pa55"
SERVICE_USER = "svc.rooms@contoso.example"
SERVICE_PASSWORD = "Svc-Rooms-Pa55"
GRAPH_SCOPE = ["https://graph.microsoft.com/.default"]
UTC = EWSTimeZone("UTC")

SCENARIO = f"""
[[tenants]]
name = "contoso"
domains = ["contoso.example"]

[[apps]]
name = "python-rooms"
roles = ["Calendars.ReadWrite", "User.Read.All", "Place.Read.All"]
secrets = [{{ value = "{SECRET}" }}]

# Reads calendars and places but may not write: Graph's decline needs Calendars.ReadWrite.
[[apps]]
name = "reader"
client_id = "{READER_ID}"
roles = ["Calendars.Read", "Place.Read.All"]
secrets = [{{ value = "{READER_SECRET}" }}]

[[users]]
upn = "ada@contoso.example"
display_name = "Ada Lovelace"
password = "{ADA_PASSWORD}"

[[rooms]]
upn = "room.a1@contoso.example"
display_name = "A1"
office_location = "Building A"

[[rooms]]
upn = "room.a2@contoso.example"
display_name = "A2"
office_location = "Building A"

[[rooms]]
upn = "room.b1@contoso.example"
display_name = "B1"
office_location = "Building B"
# Keeps the organizer's subjects (A1 and A2 have Exchange's defaults: the organizer's name).
calendar_processing = {{ delete_subject = false, add_organizer_to_subject = false }}

[[exchange.accounts]]
address = "{SERVICE_USER}"
password = "{SERVICE_PASSWORD}"
impersonation = true

[[events]]
mailbox = "ada@contoso.example"
subject = "Design review"
start = "2030-05-06T10:00:00Z"
duration = "1h"
attendees = ["room.a1@contoso.example"]

[[events]]
mailbox = "ada@contoso.example"
subject = "Planning"
start = "2030-05-07T10:00:00Z"
duration = "1h"
attendees = ["room.b1@contoso.example"]
"""


@pytest.fixture(scope="module")
def rooms_emulator(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m365-emulator-rooms")
    scenario_path = folder / "scenario.toml"
    scenario_path.write_text(SCENARIO)
    with running_emulator(["--scenario", str(scenario_path)], folder) as ready:
        # msal and exchangelib go through requests, which lets REQUESTS_CA_BUNDLE override a
        # session's `verify`: trust this emulator's CA there for the module's tests.
        previous_bundle = os.environ.get("REQUESTS_CA_BUNDLE")
        os.environ["REQUESTS_CA_BUNDLE"] = ready["ca_cert"]
        try:
            yield ready
        finally:
            if previous_bundle is None:
                os.environ.pop("REQUESTS_CA_BUNDLE", None)
            else:
                os.environ["REQUESTS_CA_BUNDLE"] = previous_bundle


@pytest.fixture(autouse=True)
def fresh_protocol_cache():
    yield
    close_connections()


def graph_token(emulator, client_id, secret):
    app = msal.ConfidentialClientApplication(
        client_id,
        client_credential=secret,
        authority=emulator["authority"],
        verify=emulator["ca_cert"],
        instance_discovery=False,
    )
    result = app.acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert "access_token" in result, result
    return result["access_token"]


def graph(emulator, client_id=None, secret=SECRET):
    session = requests.Session()
    session.verify = emulator["ca_cert"]
    session.headers["Authorization"] = f"Bearer {graph_token(emulator, client_id or emulator['client_id'], secret)}"
    return session


def ews_account(emulator, address, username, password, access_type):
    config = Configuration(
        service_endpoint=emulator["ews_url"],
        credentials=Credentials(username, password),
        auth_type=NTLM,
    )
    return Account(address, config=config, autodiscover=False, access_type=access_type)


def may(day):
    return EWSDateTime(2030, 5, day, tzinfo=UTC), EWSDateTime(2030, 5, day + 1, tzinfo=UTC)


def test_exchangelib_room_lists_and_rooms_are_the_places_apis(rooms_emulator):
    places = graph(rooms_emulator)
    reply = places.get(f"{rooms_emulator['graph_url']}/places/microsoft.graph.roomlist")
    assert reply.status_code == 200, reply.text
    graph_lists = {(place["displayName"], place["emailAddress"]) for place in reply.json()["value"]}
    assert graph_lists == {
        ("Building A", "rooms.building-a@contoso.example"),
        ("Building B", "rooms.building-b@contoso.example"),
    }

    account = ews_account(rooms_emulator, "ada@contoso.example", SERVICE_USER, SERVICE_PASSWORD, IMPERSONATION)
    ews_lists = {(room_list.name, room_list.email_address) for room_list in account.protocol.get_roomlists()}
    assert ews_lists == graph_lists
    for _, address in graph_lists:
        reply = places.get(f"{rooms_emulator['graph_url']}/places/{address}/microsoft.graph.roomlist/rooms")
        assert reply.status_code == 200, reply.text
        graph_rooms = {(room["displayName"], room["emailAddress"]) for room in reply.json()["value"]}
        ews_rooms = {(room.name, room.email_address) for room in account.protocol.get_rooms(address)}
        assert ews_rooms == graph_rooms
    assert {room.email_address for room in account.protocol.get_rooms("rooms.building-a@contoso.example")} == {
        "room.a1@contoso.example",
        "room.a2@contoso.example",
    }
    with pytest.raises(ErrorNameResolutionNoResults):
        list(account.protocol.get_rooms("rooms.nowhere@contoso.example"))


def test_exchangelib_declines_a_meeting_as_the_impersonated_room(rooms_emulator):
    room = ews_account(rooms_emulator, "room.a1@contoso.example", SERVICE_USER, SERVICE_PASSWORD, IMPERSONATION)
    start, end = may(6)
    [meeting] = list(room.calendar.view(start=start, end=end))
    # Exchange's default calendar processing (DeleteSubject, AddOrganizerToSubject) left the
    # organizer's name where Ada wrote "Design review".
    assert meeting.subject == "Ada Lovelace"
    ada = ews_account(rooms_emulator, "ada@contoso.example", "CONTOSO\\ada", ADA_PASSWORD, DELEGATE)
    [before] = list(ada.calendar.view(start=start, end=end))
    assert before.subject == "Design review"
    assert [resource.response_type for resource in before.resources] == ["Accept"]
    # SEND_ONLY: exchangelib saves a copy of SEND_AND_SAVE_COPY answers in Sent Items, which it
    # looks up through the folder hierarchy (FindFolder), and the emulator's mailboxes have only
    # their calendar (a known deviation in the README).
    meeting.decline(message_disposition=SEND_ONLY, body="Nobody checked in.")
    assert list(room.calendar.view(start=start, end=end)) == []

    [original] = list(ada.calendar.view(start=start, end=end))
    [resource] = original.resources
    assert resource.mailbox.email_address == "room.a1@contoso.example"
    assert resource.response_type == "Decline"
    assert resource.last_response_time is not None


def test_graph_decline_needs_calendars_readwrite_and_leaves_the_organizer_a_declined_room(rooms_emulator):
    base = rooms_emulator["graph_url"]
    writer = graph(rooms_emulator)
    events = writer.get(f"{base}/users/room.b1@contoso.example/events")
    assert events.status_code == 200, events.text
    [booking] = [event for event in events.json()["value"] if event["subject"] == "Planning"]
    url = f"{base}/users/room.b1@contoso.example/events/{booking['id']}/decline"
    body = {"comment": "Nobody checked in.", "sendResponse": True}

    reader = graph(rooms_emulator, READER_ID, READER_SECRET)
    refused = reader.post(url, json=body)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "ErrorAccessDenied"

    declined = writer.post(url, json=body)
    assert declined.status_code == 202, declined.text
    assert declined.content == b""
    left = writer.get(f"{base}/users/room.b1@contoso.example/events").json()["value"]
    assert [event["subject"] for event in left] == []
    [original] = [
        event for event in writer.get(f"{base}/users/ada@contoso.example/events").json()["value"] if event["subject"] == "Planning"
    ]
    [room] = [attendee for attendee in original["attendees"] if attendee["emailAddress"]["address"] == "room.b1@contoso.example"]
    assert room["type"] == "resource"
    assert room["status"]["response"] == "declined"
    missing = writer.post(f"{base}/users/room.b1@contoso.example/events/{booking['id']}/decline", json=body)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "ErrorItemNotFound"


def test_a_meeting_booked_through_graph_is_processed_by_the_rooms_calendar_processing(rooms_emulator):
    base = rooms_emulator["graph_url"]
    writer = graph(rooms_emulator)
    room_a2 = "room.a2@contoso.example"

    def book(subject, start, end, sensitivity="normal"):
        created = writer.post(
            f"{base}/users/ada@contoso.example/events",
            json={
                "subject": subject,
                "body": {"contentType": "html", "content": "<p>Budgets</p>"},
                "sensitivity": sensitivity,
                "start": {"dateTime": start, "timeZone": "UTC"},
                "end": {"dateTime": end, "timeZone": "UTC"},
                "attendees": [{"emailAddress": {"address": room_a2}, "type": "resource"}],
            },
        )
        assert created.status_code == 201, created.text
        return created.json()

    def room_answer(event_id):
        event = writer.get(f"{base}/users/ada@contoso.example/events/{event_id}").json()
        [room] = [attendee for attendee in event["attendees"] if attendee["emailAddress"]["address"] == room_a2]
        return room["status"]["response"]

    def room_view():
        reply = writer.get(
            f"{base}/users/{room_a2}/calendarView",
            params={"startDateTime": "2030-05-08T00:00:00Z", "endDateTime": "2030-05-09T00:00:00Z", "$select": "subject,body,sensitivity,isCancelled,iCalUId"},
        )
        assert reply.status_code == 200, reply.text
        return reply.json()["value"]

    first = book("Budget talks", "2030-05-08T09:00:00", "2030-05-08T10:00:00", sensitivity="private")
    assert room_answer(first["id"]) == "accepted"
    [copy] = room_view()
    assert copy["iCalUId"] == first["iCalUId"]
    assert copy["subject"] == "Ada Lovelace"
    assert "Budgets" not in copy["body"]["content"]
    assert copy["sensitivity"] == "normal"

    # Half an hour of overlap: AllowConflicts is $false, so the room declines and holds nothing.
    second = book("Overlapping", "2030-05-08T09:30:00", "2030-05-08T10:30:00")
    assert room_answer(second["id"]) == "declined"
    assert [event["iCalUId"] for event in room_view()] == [first["iCalUId"]]

    # Ada cancels: the room keeps a cancelled copy (RemoveCanceledMeetings is $false).
    deleted = writer.delete(f"{base}/users/ada@contoso.example/events/{first['id']}")
    assert deleted.status_code == 204, deleted.text
    [cancelled] = room_view()
    assert cancelled["isCancelled"] is True
    assert cancelled["subject"].startswith("Canceled: ")
