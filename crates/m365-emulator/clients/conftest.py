"""Starts the m365-emulator binary for the client proofs.

The binary comes from M365_EMULATOR_BIN (the Rust test `python_clients.rs` sets it), else from
the workspace's target directories. The scenario is written here, with a freshly generated
certificate for the certificate sign-in test; `generated_emulator` is a generated organisation
instead, and `notification_listener` a local endpoint for change notifications.
"""

import contextlib
import datetime
import http.server
import json
import os
import pathlib
import queue
import subprocess
import threading
import urllib.parse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

WORKSPACE = pathlib.Path(__file__).resolve().parents[3]
SECRET = "python-proof-secret"
EXPIRED_SECRET = "python-proof-expired-secret"
THROTTLED_USER = "tess@contoso.example"
ADA_PASSWORD = "Ada-Pa55word"
SERVICE_USER = "svc.calbridge@contoso.example"
SERVICE_PASSWORD = "Svc-Pa55word"
# An app registration for EWS over OAuth (Exchange Online / hybrid): only full_access_as_app.
EWS_APP_ID = "3c7e5a1f-0b2d-4e6f-8a9c-1d2e3f405162"
EWS_APP_SECRET = "python-proof-ews-secret"


def emulator_binary() -> pathlib.Path:
    explicit = os.environ.get("M365_EMULATOR_BIN")
    if explicit:
        return pathlib.Path(explicit)
    target_dirs = [os.environ.get("CARGO_TARGET_DIR"), WORKSPACE / "target", WORKSPACE / "target-emu"]
    for target in filter(None, target_dirs):
        for profile in ("debug", "release"):
            candidate = pathlib.Path(target) / profile / "m365-emulator"
            if candidate.exists():
                return candidate
    pytest.fail("m365-emulator binary not found: run `cargo build -p m365-emulator` or set M365_EMULATOR_BIN")


def make_certificate(folder: pathlib.Path) -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "calbridge python proof")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    (folder / "app-cert.pem").write_text(certificate_pem)
    return {
        "private_key": key_pem,
        "public_certificate": certificate_pem,
        "thumbprint": certificate.fingerprint(hashes.SHA1()).hex(),
    }


SCENARIO = f"""
[[tenants]]
name = "contoso"
domains = ["contoso.example"]

[[apps]]
name = "python-proof"
roles = ["Calendars.ReadWrite", "User.Read.All", "Group.Read.All"]
secrets = [{{ value = "{SECRET}" }}, {{ value = "{EXPIRED_SECRET}", expires = "-1d" }}]
certificates = [{{ pem_file = "app-cert.pem" }}]

# Office 365 Exchange Online's application permission for EWS (the ready line names the app above).
[[apps]]
name = "ews-oauth"
client_id = "{EWS_APP_ID}"
roles = ["full_access_as_app"]
secrets = [{{ value = "{EWS_APP_SECRET}" }}]

[[users]]
upn = "ada@contoso.example"
display_name = "Ada Lovelace"
given_name = "Ada"
surname = "Lovelace"
time_zone = "W. Europe Standard Time"
password = "{ADA_PASSWORD}"

[[users]]
upn = "bob@contoso.example"
display_name = "Bob Builder"
time_zone = "Eastern Standard Time"

[[users]]
upn = "{THROTTLED_USER}"

# The on-premises service account that impersonates mailboxes (EWS proofs).
[[exchange.accounts]]
address = "{SERVICE_USER}"
password = "{SERVICE_PASSWORD}"
display_name = "calbridge service"
impersonation = true

# Weekly across Europe's spring DST change (2030-03-31), with a deleted and a moved occurrence.
[[events]]
id = "AAMkAGseriesEurope"
mailbox = "ada@contoso.example"
subject = "Weekly sync"
start = "2030-03-04T10:00:00"
duration = "1h"
recurrence = {{ pattern = {{ type = "weekly", interval = 1, daysOfWeek = ["monday", "thursday"], firstDayOfWeek = "monday" }}, range = {{ type = "numbered", numberOfOccurrences = 12 }} }}
exceptions = [
  {{ original_start = "2030-03-11T10:00:00", deleted = true }},
  {{ original_start = "2030-03-21T10:00:00", start = "2030-03-21T15:30:00", subject = "Weekly sync (moved)" }},
]

# Daily across the US spring DST change (2030-03-10) and into autumn's end range.
[[events]]
id = "AAMkAGseriesEastern"
mailbox = "bob@contoso.example"
subject = "Early call"
start = "2030-03-07T07:30:00"
duration = "45m"
recurrence = {{ pattern = {{ type = "daily", interval = 2 }}, range = {{ type = "endDate", endDate = "2030-03-20" }} }}
exceptions = [{{ original_start = "2030-03-11T07:30:00", deleted = true }}]

# Last Friday of each month, Europe's autumn DST change (2030-10-27) in the middle.
[[events]]
id = "AAMkAGseriesMonthly"
mailbox = "ada@contoso.example"
subject = "Month end"
start = "2030-08-30T16:00:00"
duration = "30m"
recurrence = {{ pattern = {{ type = "relativeMonthly", interval = 1, daysOfWeek = ["friday"], index = "last" }}, range = {{ type = "endDate", endDate = "2031-01-31" }} }}

# Every second month on the 15th.
[[events]]
id = "AAMkAGseriesAbsolute"
mailbox = "bob@contoso.example"
subject = "Billing"
start = "2030-01-15T09:00:00"
duration = "1h"
recurrence = {{ pattern = {{ type = "absoluteMonthly", interval = 2, dayOfMonth = 15 }}, range = {{ type = "numbered", numberOfOccurrences = 5 }} }}
"""


@contextlib.contextmanager
def running_emulator(arguments, folder):
    """Starts the emulator with `arguments`, yields its ready line, stops it at the end."""
    process = subprocess.Popen(
        [str(emulator_binary()), "--listen", "127.0.0.1:0", "--state-dir", str(folder / "state"), *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = {}

    def read_ready_line():
        line["text"] = process.stdout.readline()

    reader = threading.Thread(target=read_ready_line, daemon=True)
    reader.start()
    reader.join(timeout=30)
    if not line.get("text"):
        process.kill()
        pytest.fail(f"emulator printed no ready line: {process.stderr.read() if process.poll() is not None else 'still running'}")
    try:
        yield json.loads(line["text"])
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m365-emulator")
    certificate = make_certificate(folder)
    scenario_path = folder / "scenario.toml"
    scenario_path.write_text(SCENARIO)
    with running_emulator(["--scenario", str(scenario_path)], folder) as ready:
        # requests lets REQUESTS_CA_BUNDLE override a session's `verify`, so trust the emulator's CA there too.
        previous_bundle = os.environ.get("REQUESTS_CA_BUNDLE")
        os.environ["REQUESTS_CA_BUNDLE"] = ready["ca_cert"]
        ready["certificate"] = certificate
        try:
            yield ready
        finally:
            if previous_bundle is None:
                os.environ.pop("REQUESTS_CA_BUNDLE", None)
            else:
                os.environ["REQUESTS_CA_BUNDLE"] = previous_bundle


@pytest.fixture(scope="session")
def generated_emulator(tmp_path_factory):
    """A generated organisation of 150 people (more than one page of users and of members).

    Its calendars are laid out around the day it starts; a test that reads a span first clears
    it or works in a span of its own."""
    folder = tmp_path_factory.mktemp("m365-emulator-generated")
    with running_emulator(["--generate-users", "150", "--seed", "1"], folder) as ready:
        yield ready


class NotificationListener:
    """A notification endpoint on loopback http (which the emulator allows, as Graph does not):
    answers Graph's validation request by echoing `validationToken` as text/plain, and queues
    every notification it receives."""

    def __init__(self):
        self.validations = queue.Queue()
        self.notifications = queue.Queue()
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if "validationToken" in query:
                    token = query["validationToken"][0].encode()
                    listener.validations.put(token.decode())
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(token)))
                    self.end_headers()
                    self.wfile.write(token)
                    return
                for notification in json.loads(body or b"{}").get("value", []):
                    listener.notifications.put(notification)
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *arguments):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notifications"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def notification_listener():
    listener = NotificationListener()
    try:
        yield listener
    finally:
        listener.close()
