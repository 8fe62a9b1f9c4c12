"""The console's files, health, metrics, and `python -m gateway` as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp

from gateway.app import CONTENT_SECURITY_POLICY, RunningGateway
from services.shared.server import RunningService
from tests.integration.gateway.conftest import Client, StartGateway
from tests.integration.gateway.support import request
from tests.support.servers import ROOT, TOKENS, TOKENS_ENV


async def test_the_console_is_404_until_its_page_exists_then_served_with_its_files(
    gateway: RunningGateway, client: Client, tmp_path: Path,
) -> None:
    browser = client(gateway, who=None)
    missing = await request(browser, "GET", "/")
    assert (missing.status, missing.reason) == (404, "FILE_NOT_FOUND")
    (tmp_path / "index.html").write_text("<!doctype html><script src=/static/app.js></script>")
    (tmp_path / "app.js").write_text("console.log('hi')")
    (tmp_path / ".env").write_text("SECRET=1")
    (tmp_path.parent / "outside.txt").write_text("not for you")
    page = await request(browser, "GET", "/")
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["Cache-Control"] == "no-cache"
    script = await request(browser, "GET", "/static/app.js")
    assert (script.status, script.body) == (200, "console.log('hi')")
    assert "javascript" in script.headers["Content-Type"]
    for path in ("/static/.env", "/static/%2e%2e/outside.txt", "/static/nothing.js"):
        assert (await request(browser, "GET", path)).status == 404, path


async def test_the_consoles_default_files_are_those_of_gateway_static(
    start_gateway: StartGateway, client: Client,
) -> None:
    gateway = await start_gateway(CRM_GATEWAY_STATIC_DIR=str(ROOT / "gateway" / "static"))
    answer = await request(client(gateway, who=None), "GET", "/static/segments.js")
    assert answer.status == 200


async def test_the_service_worker_and_the_manifest_are_served_from_the_root(
    start_gateway: StartGateway, client: Client,
) -> None:
    gateway = await start_gateway(CRM_GATEWAY_STATIC_DIR=str(ROOT / "gateway" / "static"))
    anyone = client(gateway, who=None)
    worker = await request(anyone, "GET", "/sw.js")
    assert worker.status == 200
    assert worker.headers["Content-Type"].startswith("text/javascript")
    assert worker.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    manifest = await request(anyone, "GET", "/manifest.webmanifest")
    assert manifest.status == 200
    assert manifest.headers["Content-Type"].startswith("application/manifest+json")


def test_the_service_worker_keeps_every_file_of_the_console() -> None:
    static = ROOT / "gateway" / "static"
    worker = (static / "sw.js").read_text()
    shell = set(re.findall(r'^  "(/[^"]*)",$', worker, re.MULTILINE))
    files = {f"/static/{path.relative_to(static).as_posix()}" for path in static.rglob("*")
             if path.is_file() and path.name not in {"index.html", "sw.js", "manifest.webmanifest"}}
    assert shell == files | {"/", "/manifest.webmanifest"}


async def test_health_answers_anyone_and_metrics_only_on_their_own_port(
    start_gateway: StartGateway, leads_server: RunningService, client: Client,
) -> None:
    """Metrics say what is called and how often: not for the public port (issue 11)."""
    gateway = await start_gateway(CRM_LEADS_TARGET=leads_server.target, CRM_METRICS_PORT="0")
    anyone = client(gateway, who=None)
    health = await request(anyone, "GET", "/healthz")
    assert (health.status, health.body) == (200, {"status": "ok"})
    await request(anyone, "GET", "/v1/leads")
    public = await request(anyone, "GET", "/metrics")
    assert (public.status, public.reason) == (404, "ROUTE_NOT_FOUND")
    assert gateway.metrics_port is not None and gateway.metrics_port != gateway.port
    async with aiohttp.ClientSession() as scraper:
        exposition = await request(scraper, "GET",
                                   f"http://127.0.0.1:{gateway.metrics_port}/metrics")
    assert exposition.status == 200
    assert exposition.headers["Content-Type"].startswith("text/plain")
    text = exposition.body
    assert 'crm_gateway_requests_total{method="GET",route="healthz",status="200"}' in text
    assert 'route="LeadsService.ListLeads",status="401"' in text
    assert "crm_gateway_request_duration_seconds_bucket" in text
    assert "crm_gateway_sse_streams" in text


async def test_python_m_gateway_serves_then_ends_streams_and_exits_on_sigterm(
    leads_server: RunningService, tmp_path: Path,
) -> None:
    env = {**os.environ, "CRM_API_TOKENS": TOKENS_ENV, "CRM_LEADS_TARGET": leads_server.target,
           "CRM_LOG_LEVEL": "INFO", "CRM_GATEWAY_STATIC_DIR": str(tmp_path),
           "CRM_SHUTDOWN_GRACE_SECONDS": "3", "CRM_SSE_HEARTBEAT_SECONDS": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "--port", "0", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert process.stderr is not None
    lines: list[str] = []
    try:
        port = 0
        async with asyncio.timeout(30):
            while not port:
                line = (await process.stderr.readline()).decode()
                assert line, "the gateway exited: " + "".join(lines)
                lines.append(line)
                entry = json.loads(line) if line.startswith("{") else {}
                if "serving" in entry.get("message", ""):
                    port = int(entry["port"])
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {TOKENS['alice']}"}
        async with aiohttp.ClientSession(url, headers=headers) as session:
            async with session.get("/healthz") as health:
                assert health.status == 200
            async with session.get("/v1/events?types=lead.created") as stream:
                assert (await stream.content.readline()).startswith(b"event: bookmark")
                process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(10):
                    while await stream.content.readline():
                        pass
        assert await asyncio.wait_for(process.wait(), 15) == 0
        lines.extend(line.decode() for line in (await process.stderr.read()).splitlines())
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = "".join(lines)
    assert '"message": "stopped"' in log
    assert TOKENS["alice"] not in log and "Bearer" not in log
