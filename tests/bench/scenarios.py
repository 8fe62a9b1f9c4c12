"""The calls measured, each over gRPC (straight to the service) and HTTP (the gateway).

Every mutating call sends a fresh idempotency key, except the replays. Data a
call consumes (leads to move, pending appointments to confirm) is made before
the measurement, for a time budget proportional to the time measured (with
warm-ups, every path); if it runs out anyway the measurement window ends there
and the result says so.

The Lean… scenarios make the same calls to the lean reference (tests.bench.lean,
PostgreSQL only), in the turns of the call they are the reference for; RoundTrip
calls the floor beside it (one `SELECT 1` a call).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import ClassVar

from crm.bookings.v1 import bookings_pb2
from crm.leads.v1 import leads_pb2, leads_pb2_grpc
from crm.messaging.v1 import messaging_pb2

from tests.bench.kit import DEADLINE, PHONE, Exhausted, Failed, Kit, fill, new_key

GRPC, HTTP = "grpc", "http"
# A lead's forward moves, NEW → … → WON: five real status changes per lead.
MOVES = (leads_pb2.LEAD_STATUS_CONTACTED, leads_pb2.LEAD_STATUS_QUALIFIED,
         leads_pb2.LEAD_STATUS_PROPOSAL_SENT, leads_pb2.LEAD_STATUS_NEGOTIATING,
         leads_pb2.LEAD_STATUS_WON)
SMS_BODY = "Closed Loop bench: see you at 10."


class Scenario:
    """One call, measured by `tests.bench.load`; `prepare` runs before each concurrency."""

    name: ClassVar[str]
    # What the report calls it (default: the name).
    label: ClassVar[str] = ""
    paths: ClassVar[tuple[str, ...]] = (GRPC, HTTP)
    backends: ClassVar[tuple[str, ...]] = ("postgresql", "sqlite")
    # A reference measured in the turns of that scenario, which the report
    # gives its ratio to (xlean).
    reference_for: ClassVar[str] = ""
    # Served by the lean reference's process (tests.bench.lean), which the run then starts.
    on_lean: ClassVar[bool] = False
    # Concurrencies below this are skipped (the scenario means nothing there).
    min_concurrency: ClassVar[int] = 1
    # Time spent making consumable data, as a share of warm-up + duration.
    prepare_share: ClassVar[float] = 0.0

    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.counter = itertools.count()

    @property
    def stubs(self) -> list[leads_pb2_grpc.LeadsServiceStub]:
        """The leads service's stubs, one per channel."""
        return self.kit.leads

    async def prepare(self, concurrency: int, budget: float) -> None:
        """Make what the calls need; `budget` is the time to spend on consumables."""

    async def grpc(self, worker: int) -> None:
        raise NotImplementedError

    async def http(self, worker: int) -> None:
        raise NotImplementedError


class Echo(Scenario):
    """The baseline: the same client, a server that only echoes."""

    name = "Echo"
    paths = (GRPC,)

    async def prepare(self, concurrency: int, budget: float) -> None:
        self.request = leads_pb2.GetLeadRequest(lead_id="01JBENCHBENCHBENCHBENCHBEN")

    async def grpc(self, worker: int) -> None:
        kit = self.kit
        await kit.echo[worker % len(kit.echo)](self.request, metadata=kit.metadata,
                                               timeout=DEADLINE)


class CreateLead(Scenario):
    name = "CreateLead"

    async def grpc(self, worker: int) -> None:
        stubs = self.stubs
        await stubs[worker % len(stubs)].CreateLead(
            leads_pb2.CreateLeadRequest(name=f"Bench Lead {next(self.counter)}", phone=PHONE),
            metadata=self.kit.keyed(new_key()), timeout=DEADLINE)

    async def http(self, worker: int) -> None:
        await self.kit.http("POST", "/v1/leads",
                            {"name": f"Bench Lead {next(self.counter)}", "phone": PHONE},
                            key=new_key())


class GetLead(Scenario):
    name = "GetLead"

    async def prepare(self, concurrency: int, budget: float) -> None:
        if not hasattr(self, "lead_ids"):
            self.lead_ids = await asyncio.gather(*(self.kit.create_lead() for _ in range(64)))

    def _lead(self) -> str:
        return self.lead_ids[next(self.counter) % len(self.lead_ids)]

    async def grpc(self, worker: int) -> None:
        kit = self.kit
        await kit.leads[worker % len(kit.leads)].GetLead(
            leads_pb2.GetLeadRequest(lead_id=self._lead()), metadata=kit.metadata,
            timeout=DEADLINE)

    async def http(self, worker: int) -> None:
        await self.kit.http("GET", f"/v1/leads/{self._lead()}")


class UpdateLeadStatus(Scenario):
    """Every call moves a lead one step forward; a lead goes back in line after each move,
    so no two calls in flight move the same lead."""

    name = "UpdateLeadStatus"
    prepare_share = 0.5

    def __init__(self, kit: Kit) -> None:
        super().__init__(kit)
        self.line: deque[tuple[str, int]] = deque()

    async def prepare(self, concurrency: int, budget: float) -> None:
        async def make() -> None:
            self.line.append((await self.kit.create_lead(stub=self.stubs[0]), 0))

        await fill(make, seconds=budget, at_least=4 * concurrency)

    async def _move(self, worker: int, http: bool) -> None:
        try:
            lead_id, step = self.line.popleft()
        except IndexError:
            raise Exhausted() from None
        kit = self.kit
        if http:
            await kit.http("POST", f"/v1/leads/{lead_id}:updateStatus",
                           {"status": leads_pb2.LeadStatus.Name(MOVES[step])}, key=new_key())
        else:
            await self.stubs[worker % len(self.stubs)].UpdateLeadStatus(
                leads_pb2.UpdateLeadStatusRequest(lead_id=lead_id, status=MOVES[step]),
                metadata=kit.keyed(new_key()), timeout=DEADLINE)
        # Only a lead whose move succeeded is moved again (a failed one is left aside).
        if step + 1 < len(MOVES):
            self.line.append((lead_id, step + 1))

    async def grpc(self, worker: int) -> None:
        await self._move(worker, http=False)

    async def http(self, worker: int) -> None:
        await self._move(worker, http=True)


class ConfirmAppointment(Scenario):
    """Every call confirms a pending appointment of an agent of its own (no overlap)."""

    name = "ConfirmAppointment"
    prepare_share = 1.25

    def __init__(self, kit: Kit) -> None:
        super().__init__(kit)
        self.pending: deque[str] = deque()
        self.lead_ids: list[str] = []

    async def prepare(self, concurrency: int, budget: float) -> None:
        if not self.lead_ids:
            self.lead_ids = list(await asyncio.gather(
                *(self.kit.create_lead() for _ in range(8))))

        async def make() -> None:
            n = next(self.counter)
            self.pending.append(await self.kit.create_appointment(
                self.lead_ids[n % len(self.lead_ids)], starts_in=86400 + 3600 * (n % 500)))

        await fill(make, seconds=budget, at_least=4 * concurrency)

    def _next(self) -> str:
        try:
            return self.pending.popleft()
        except IndexError:
            raise Exhausted() from None

    async def grpc(self, worker: int) -> None:
        kit = self.kit
        await kit.bookings[worker % len(kit.bookings)].ConfirmAppointment(
            bookings_pb2.ConfirmAppointmentRequest(appointment_id=self._next()),
            metadata=kit.keyed(new_key()), timeout=DEADLINE)

    async def http(self, worker: int) -> None:
        await self.kit.http("POST", f"/v1/appointments/{self._next()}:confirm", {},
                            key=new_key())


class SendSms(Scenario):
    """A text to one of a few leads through the console provider (no network)."""

    name = "SendSms"

    async def prepare(self, concurrency: int, budget: float) -> None:
        if not hasattr(self, "lead_ids"):
            self.lead_ids = await asyncio.gather(*(self.kit.create_lead() for _ in range(8)))

    def _lead(self) -> str:
        return self.lead_ids[next(self.counter) % len(self.lead_ids)]

    async def grpc(self, worker: int) -> None:
        kit = self.kit
        await kit.messaging[worker % len(kit.messaging)].SendSms(
            messaging_pb2.SendSmsRequest(lead_id=self._lead(), body=SMS_BODY),
            metadata=kit.keyed(new_key()), timeout=DEADLINE)

    async def http(self, worker: int) -> None:
        await self.kit.http("POST", "/v1/messages", {"leadId": self._lead(), "body": SMS_BODY},
                            key=new_key())


class Replay(Scenario):
    """One CreateLead, then the same key and request again and again: the stored answer.

    Every worker replays the same key (a retry storm of one call)."""

    name = "Replay"

    def __init__(self, kit: Kit) -> None:
        super().__init__(kit)
        self.keys: list[str] = []
        self.request = leads_pb2.CreateLeadRequest(name="Bench Replayed Lead", phone=PHONE)
        self.body = {"name": self.request.name, "phone": self.request.phone}

    def keys_needed(self, concurrency: int) -> int:
        return 1

    def _key(self, worker: int) -> str:
        return self.keys[worker % len(self.keys)]

    async def prepare(self, concurrency: int, budget: float) -> None:
        while len(self.keys) < self.keys_needed(concurrency):
            key = new_key()
            await self.kit.leads[0].CreateLead(self.request, metadata=self.kit.keyed(key),
                                               timeout=DEADLINE)
            self.keys.append(key)
            # Make sure what follows is a replay, on both paths.
            call = self.kit.leads[0].CreateLead(self.request, metadata=self.kit.keyed(key),
                                                timeout=DEADLINE)
            await call
            if ("idempotent-replayed", "true") not in tuple(await call.initial_metadata()):
                raise Failed("gRPC: not replayed")
            await self.kit.http("POST", "/v1/leads", self.body, key=key, expect_replayed=True)

    async def grpc(self, worker: int) -> None:
        kit = self.kit
        await kit.leads[worker % len(kit.leads)].CreateLead(
            self.request, metadata=kit.keyed(self._key(worker)), timeout=DEADLINE)

    async def http(self, worker: int) -> None:
        await self.kit.http("POST", "/v1/leads", self.body, key=self._key(worker))


class LeanCreateLead(CreateLead):
    """The same call to `tests.bench.lean`: the write by hand in raw SQL, on its own
    migrated leads database, measured in CreateLead's turns."""

    name = "LeanCreateLead"
    label = "CreateLead (lean raw SQL)"
    paths = (GRPC,)
    backends = ("postgresql",)
    reference_for = "CreateLead"
    on_lean = True

    @property
    def stubs(self) -> list[leads_pb2_grpc.LeadsServiceStub]:
        return self.kit.lean


class LeanUpdateLeadStatus(UpdateLeadStatus):
    """UpdateLeadStatus to `tests.bench.lean` (its leads made there too)."""

    name = "LeanUpdateLeadStatus"
    label = "UpdateLeadStatus (lean raw SQL)"
    paths = (GRPC,)
    backends = ("postgresql",)
    reference_for = "UpdateLeadStatus"
    on_lean = True

    @property
    def stubs(self) -> list[leads_pb2_grpc.LeadsServiceStub]:
        return self.kit.lean


class RoundTrip(Echo):
    """The floor of a call that makes one database round trip: a bare grpc.aio
    handler that runs `SELECT 1` on a pooled connection (tests.bench.lean.Floor),
    called as Echo is. Its ratio to echo bounds what any such service can reach here."""

    name = "RoundTrip"
    label = "Round trip (bare: SELECT 1)"
    backends = ("postgresql",)
    on_lean = True

    async def grpc(self, worker: int) -> None:
        kit = self.kit
        await kit.floor[worker % len(kit.floor)](self.request, metadata=kit.metadata,
                                                 timeout=DEADLINE)


class ReplayOwnKey(Replay):
    """Replays again, each worker of its own key (many clients, each retrying its call)."""

    name = "ReplayOwnKey"
    min_concurrency = 2

    def keys_needed(self, concurrency: int) -> int:
        return concurrency


SCENARIOS: dict[str, type[Scenario]] = {
    s.name: s for s in (Echo, CreateLead, LeanCreateLead, UpdateLeadStatus,
                        LeanUpdateLeadStatus, ConfirmAppointment, SendSms, Replay, ReplayOwnKey,
                        GetLead, RoundTrip)
}
