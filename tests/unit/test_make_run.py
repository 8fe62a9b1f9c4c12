"""`make run` for a person: the token kept across restarts, the URL printed
only once the gateway answers, and a log a person can read."""

from __future__ import annotations

import http.server
import json
import logging
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services import __main__ as run
from services.shared import logs
from services.shared.auth import Caller
from services.shared.config import Settings


def test_the_token_is_made_once_kept_private_and_the_same_after_a_restart(
    tmp_path: Path
) -> None:
    data = tmp_path / "var"
    first = run.kept_tokens(data)
    kept = data / run.TOKENS_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert run.kept_tokens(data) == first  # a restart signs nobody out
    principals = [entry.split(":", 1)[0] for entry in first.split(",")]
    assert principals == ["you", *run.PRINCIPALS]
    kept.unlink()
    assert run.kept_tokens(data) != first  # deleted: new tokens


def test_the_one_printed_token_is_an_agent_of_the_org_default_and_the_rest_are_services(
    tmp_path: Path
) -> None:
    made = run.kept_tokens(tmp_path)
    accepted = Settings.from_env("leads", {"CRM_API_TOKENS": made}).tokens
    assert accepted[run.your_token(made)] == Caller("you", "agent", "default")
    assert sorted(c.principal for c in accepted.values() if c.role == "service") == sorted(
        run.PRINCIPALS)


def test_a_kept_token_file_made_readable_by_others_is_made_private_again(
    tmp_path: Path
) -> None:
    first = run.kept_tokens(tmp_path)
    (tmp_path / run.TOKENS_FILE).chmod(0o644)
    assert run.kept_tokens(tmp_path) == first
    assert stat.S_IMODE((tmp_path / run.TOKENS_FILE).stat().st_mode) == 0o600


class _Health(http.server.BaseHTTPRequestHandler):
    ready_at = 0.0

    def do_GET(self) -> None:
        self.send_response(200 if time.monotonic() >= self.ready_at else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health() -> Iterator[tuple[str, type[_Health]]]:
    handler = type("Health", (_Health,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/healthz", handler
    server.shutdown()
    server.server_close()


def test_ready_waits_for_a_healthz_that_answers_200(
    health: tuple[str, type[_Health]]
) -> None:
    url, handler = health
    handler.ready_at = time.monotonic() + 0.6  # 503 until then, as a gateway starting up
    assert run.wait_until_ready(url, lambda: True, timeout=10)
    assert time.monotonic() >= handler.ready_at


def test_ready_gives_up_when_the_servers_stop_or_time_runs_out(
    health: tuple[str, type[_Health]]
) -> None:
    url, handler = health
    handler.ready_at = time.monotonic() + 3600
    assert not run.wait_until_ready(url, lambda: False, timeout=10)
    assert not run.wait_until_ready(url, lambda: True, timeout=0.3)


def _record(name: str, message: str, **facts: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": name, "msg": message, "levelno": logging.INFO,
                                    "levelname": "INFO"})
    record.__dict__.update(facts)
    return record


def test_the_text_log_shows_emoji_as_emoji_and_leaves_calls_that_went_well_out() -> None:
    text = logs.TextFormatter("messaging")
    line = text.format(_record("services.messaging.providers",
                               "SMS to +14155550123: See you 😊", provider_message_id="SM1"))
    assert line.endswith("messaging SMS to +14155550123: See you 😊")
    quiet = logs.QuietAccess()
    assert not quiet.filter(_record("crm.access", "/crm.leads.v1.LeadsService/GetLead OK",
                                    code="OK"))
    assert quiet.filter(_record("crm.access", "/crm.leads.v1.LeadsService/GetLead NOT_FOUND",
                                code="NOT_FOUND"))
    assert not quiet.filter(_record("crm.access", "GET /v1/leads 200", status=200))
    assert quiet.filter(_record("crm.access", "POST /v1/leads 400", status=400))
    assert quiet.filter(_record("crm.gateway", "gateway serving on 127.0.0.1:8080"))


def test_the_json_log_keeps_emoji_unescaped() -> None:
    line = logs.JsonFormatter("messaging").format(_record("x", "See you 😊"))
    assert "😊" in line and json.loads(line)["message"] == "See you 😊"


def test_the_log_format_is_json_or_text() -> None:
    assert logs.log_format("TEXT") == "text"
    with pytest.raises(ValueError, match="json or text"):
        logs.log_format("yaml")


def test_each_server_gets_its_own_metrics_port_counted_up_from_crm_metrics_port() -> None:
    servers = list(run.SERVERS)
    assert run.metrics_ports({}, servers) == {}
    ports = run.metrics_ports({"CRM_METRICS_PORT": "9100"}, servers)
    assert ports == {"services.leads": 9100, "services.bookings": 9101,
                     "services.messaging": 9102, "gateway": 9103}
    assert run.server_env({"CRM_METRICS_PORT": "9100"}, "gateway", ports)[
        "CRM_METRICS_PORT"] == "9103"
    assert set(run.metrics_ports({"CRM_METRICS_PORT": "0"}, servers).values()) == {0}
    for wrong in ("nine", "70000", "65534"):
        with pytest.raises(SystemExit, match="CRM_METRICS_PORT"):
            run.metrics_ports({"CRM_METRICS_PORT": wrong}, servers)


def test_the_metrics_ports_are_printed_with_the_other_addresses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(run, "wait_until_ready", lambda url, running: True)
    ports = run.metrics_ports({"CRM_METRICS_PORT": "9100"}, run.SERVERS)
    run.announce({"CRM_DATA_DIR": "var"}, run.SERVERS, None, lambda: True, ports)
    assert ("metrics:      leads :9100, bookings :9101, messaging :9102, gateway :9103"
            in capsys.readouterr().out)
