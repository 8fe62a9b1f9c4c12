"""The typed TypeScript client (clients/typescript), as a front-end team generates and trusts it.

The types are generated again from the running gateway's /openapi.json with
openapi-typescript and must equal the committed src/schema.d.ts (the document
drifted otherwise: `npm run generate`); the client is type-checked against them
with `tsc --noEmit`, a call the document does not allow must fail to compile,
and the compiled client calls every route of a running gateway from Node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.support.servers import ROOT, TOKENS

PACKAGE = ROOT / "clients" / "typescript"
BIN = PACKAGE / "node_modules" / ".bin"

# Every route a client calls, through the client, in an order that makes each one real.
EVERY_ROUTE = """
import { ApiError, ClosedLoopClient } from "./client.js";
const [baseUrl, token] = process.argv.slice(2);
const crm = new ClosedLoopClient({ baseUrl, token });
const seen = {};
const note = async (name, call) => {
  try { seen[name] = (await call()) ?? null; }
  catch (e) { if (!(e instanceof ApiError)) throw e; seen[name] = { refused: e.status }; }
};
const lead = await crm.createLead({ name: "Ada", phone: "+14155550123" });
const other = await crm.createLead({ name: "Grace", phone: "+14155550124" });
await note("getLead", () => crm.getLead(lead.leadId));
await note("listLeads", () => crm.listLeads({ pageSize: 1 }));
await note("updateLeadStatus", () => crm.updateLeadStatus(lead.leadId,
  { status: "LEAD_STATUS_CONTACTED" }));
await note("batchUpdateLeadStatus", () => crm.batchUpdateLeadStatus(
  { leadIds: [other.leadId], status: "LEAD_STATUS_QUALIFIED" }));
await note("listStatusChanges", () => crm.listStatusChanges(lead.leadId));
const start = new Date(Date.now() + 86400000);
const end = new Date(start.getTime() + 3600000);
const booking = { leadId: lead.leadId, agentId: "agent-ts",
  startTime: start.toISOString(), endTime: end.toISOString() };
const a = await crm.createAppointment(booking);
const b = await crm.createAppointment({ ...booking, agentId: "agent-ts-2" });
const c = await crm.createAppointment({ ...booking, agentId: "agent-ts-3" });
await note("getAppointment", () => crm.getAppointment(a.appointmentId));
await note("listAppointments", () => crm.listAppointments({ leadId: lead.leadId }));
await note("confirmAppointment", () => crm.confirmAppointment(a.appointmentId));
await note("completeAppointment", () => crm.completeAppointment(a.appointmentId));
await note("cancelAppointment", () => crm.cancelAppointment(b.appointmentId, { reason: "moved" }));
await note("listAppointmentChanges", () => crm.listAppointmentChanges(a.appointmentId));
await note("legacyConfirmAppointment", () => crm.legacyConfirmAppointment(
  { appointmentId: c.appointmentId }));
const sms = await crm.sendSms({ leadId: lead.leadId, body: "See you at 3pm" });
await note("getMessage", () => crm.getMessage(sms.messageId));
await note("listMessages", () => crm.listMessages(lead.leadId));
await note("getProviderStatus", () => crm.getProviderStatus());
const template = await crm.saveMessageTemplate({ name: "Hi", body: "Hi {first_name}" });
await note("listMessageTemplates", () => crm.listMessageTemplates());
await note("deleteMessageTemplate", () => crm.deleteMessageTemplate(template.templateId));
await note("legacySendSms", () => crm.legacySendSms({ leadId: lead.leadId, message: "Hello" }));
await note("legacySmsHistory", () => crm.legacySmsHistory(lead.leadId));
await note("legacyUpdateStatus", () => crm.legacyUpdateStatus(
  { leadId: lead.leadId, status: "qualified" }));
await note("login", () => crm.login(token));
await note("session", () => crm.session());
await note("logout", () => crm.logout());
await note("healthz", () => crm.healthz());
await note("openapi", () => crm.openapi());
seen.eventsUrl = crm.eventsUrl({ lead_id: [lead.leadId], types: ["lead.created"] });
console.log(JSON.stringify(seen));
"""


def _run(*args: str, cwd: Path = PACKAGE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)


def test_the_types_are_the_documents_and_the_client_checks_against_them(
    gateway_url: str, tmp_path: Path
) -> None:
    fresh = tmp_path / "schema.d.ts"
    generated = _run(str(BIN / "openapi-typescript"), f"{gateway_url}/openapi.json",
                     "-o", str(fresh))
    assert generated.returncode == 0, generated.stderr
    assert fresh.read_text() == (PACKAGE / "src" / "schema.d.ts").read_text(), (
        "clients/typescript/src/schema.d.ts is not the document's: run `npm run generate` "
        "in clients/typescript against a running gateway")

    checked = _run(str(BIN / "tsc"), "--noEmit", "-p", str(PACKAGE))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # A call the document does not allow does not compile.
    project = tmp_path / "project"
    shutil.copytree(PACKAGE / "src", project / "src")
    shutil.copy(PACKAGE / "tsconfig.json", project / "tsconfig.json")
    (project / "src" / "wrong.ts").write_text(
        'import { ClosedLoopClient } from "./client";\n'
        'new ClosedLoopClient({ baseUrl: "http://x" }).createLead({ name: "Ada" });\n')
    wrong = _run(str(BIN / "tsc"), "--noEmit", "-p", str(project))
    assert wrong.returncode != 0 and "'phone' is missing" in wrong.stdout, wrong.stdout


def test_the_client_calls_every_route_of_a_running_gateway(gateway_url: str,
                                                           tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = _run(str(BIN / "tsc"), "-p", str(PACKAGE), "--outDir", str(dist))
    assert built.returncode == 0, built.stdout + built.stderr
    (dist / "package.json").write_text('{"type": "module"}')
    (dist / "every_route.js").write_text(EVERY_ROUTE)
    run = _run("node", str(dist / "every_route.js"), gateway_url, TOKENS["alice"], cwd=dist)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    refused = {name: answer for name, answer in seen.items()
               if isinstance(answer, dict) and "refused" in answer}
    # Only the cookie session is missing: this client sends a bearer token, not a cookie.
    assert refused == {"session": {"refused": 401}}, refused
    assert seen["getLead"]["name"] == "Ada"
    assert seen["completeAppointment"]["status"] == "APPOINTMENT_STATUS_COMPLETED"
    assert seen["legacyUpdateStatus"]["lead"]["status"] == "qualified"
    assert seen["login"]["principal"] == "alice"
    assert seen["logout"] is None and seen["healthz"] is not None
    assert seen["openapi"]["openapi"] == "3.1.0"
