"""The Python stubs as a distribution of their own (clients/python), used as another backend would.

The wheel is built from clients/python, installed into a fresh virtual
environment with nothing but its own dependencies (grpcio, protobuf,
googleapis-common-protos: none of the servers'), and the README's ten lines
run there against a real leads server: the token, the deadline, the retry
policy and one idempotency key per logical call come with the channel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

from tests.support.servers import ROOT, TOKENS, ServiceProcess, environment

# The README's example, as another backend writes it.
EXAMPLE = '''
import asyncio, json, sys
from closed_loop_client import idempotency, new_key, open_channel
from crm.leads.v1 import leads_pb2, leads_pb2_grpc

async def main(target: str, token: str) -> None:
    async with open_channel(target, token=token) as channel:
        leads = leads_pb2_grpc.LeadsServiceStub(channel)
        key = new_key()  # one logical call: every retry of it reuses the key
        request = leads_pb2.CreateLeadRequest(name="Ada", phone="+14155550123")
        lead = await leads.CreateLead(request, metadata=idempotency(key))
        again = await leads.CreateLead(request, metadata=idempotency(key))
        got = await leads.GetLead(leads_pb2.GetLeadRequest(lead_id=lead.lead_id))
        print(json.dumps({"id": lead.lead_id, "same": again == lead, "got": got == lead,
                          "status": leads_pb2.LeadStatus.Name(got.status)}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
'''
SERVER_ONLY = {"sqlalchemy", "aiohttp", "alembic", "psycopg", "aiosqlite", "twilio",
               "phonenumbers", "prometheus-client", "grpcio-health-checking", "closed-loop"}


def _pip(python: Path, *args: str) -> str:
    run = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args],
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_the_wheel_installs_alone_and_calls_a_running_service(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _pip(Path(sys.executable), "wheel", "--no-deps", "--quiet", "-w", str(wheels),
         str(ROOT / "clients" / "python"))
    [wheel] = wheels.glob("closed_loop_client-*.whl")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    _pip(python, "install", "--quiet", str(wheel))
    installed = {entry["name"].lower() for entry in json.loads(
        _pip(python, "list", "--format", "json"))}
    assert {"closed-loop-client", "grpcio", "protobuf", "googleapis-common-protos"} <= installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY

    env = environment("", tmp_path, CRM_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/leads.db")
    leads = ServiceProcess("leads", env).start()
    try:
        script = tmp_path / "backend.py"
        script.write_text(EXAMPLE)
        # -I: the fresh environment alone, nothing of this checkout on the path.
        run = subprocess.run([str(python), "-I", str(script), leads.target, TOKENS["alice"]],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60,
                             check=False, env={"PATH": os.environ.get("PATH", "")})
    finally:
        leads.kill()
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout)
    assert answer == {"id": answer["id"], "same": True, "got": True, "status": "LEAD_STATUS_NEW"}
