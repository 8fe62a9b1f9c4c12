"""The lean reference: the leads writes by hand, in raw SQL, on a bare grpc.aio server.

    python -m tests.bench.lean --database-url postgresql://… [--port N] [--pool 10]

Prints `{"port": N}` on stdout once it serves, then serves until SIGTERM.

    /crm.leads.v1.LeadsService/CreateLead
    /crm.leads.v1.LeadsService/UpdateLeadStatus
    /bench.Floor/RoundTrip      the floor: one `SELECT 1` on a pooled autocommit
                                connection a call, the request's bytes answered

The database is a leads database migrated by the service itself (`python -m
services.leads migrate`): the same tables, indexes and event log. Each call is
what the service does, with nothing around it: no interceptor, no auth (the
principal is "lean", of the org "default"), no SQLAlchemy, no domain objects, no validation
framework, no metrics, no logging. Connections are plain psycopg 3
AsyncConnections, opened at start and lent from an asyncio.Queue.

A write is one transaction in two pipelined round trips:

    1. BEGIN; pg_try_advisory_xact_lock(hash of principal, method, key);
       SELECT the key's row [UpdateLeadStatus: and SELECT the lead FOR UPDATE]
       → a stored outcome is answered (replayed); a key another call holds
       without an outcome stored is ABORTED; otherwise:
    2. INSERT the lead [UPDATE it, INSERT its status change]; upsert the key's
       row with the serialized response; INSERT the event (its transaction's
       xid, a position from the sequence); COMMIT, durable as the server's
       synchronous_commit makes it (the same for the service).

The service takes the same two round trips for CreateLead, and three for
UpdateLeadStatus (it reads the lead after claiming the key). A final refusal
(an UpdateLeadStatus that cannot move) is stored under the key like a success,
as the service does. What is left out: the service's validation (phone numbers
through `phonenumbers`; here "+" and 8 to 15 digits), its retries of transient
failures, its request context, auth, metrics and logs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
from crm.leads.v1 import leads_pb2 as pb
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, status_pb2

SERVICE = "crm.leads.v1.LeadsService"
CREATE = f"/{SERVICE}/CreateLead"
UPDATE = f"/{SERVICE}/UpdateLeadStatus"
# The floor (`Floor`): one `SELECT 1` a call, bytes in and out.
FLOOR_SERVICE = "bench.Floor"
ROUND_TRIP = f"/{FLOOR_SERVICE}/RoundTrip"
PRINCIPAL = "lean"
TTL = timedelta(seconds=86400)  # the service's default CRM_IDEMPOTENCY_TTL_SECONDS
REPLAYED = (("idempotent-replayed", "true"),)

# The contract's statuses as the leads table stores them ("new", "proposal_sent"…).
STATUS = {v.number: v.name.removeprefix("LEAD_STATUS_").lower()
          for v in pb.LeadStatus.DESCRIPTOR.values if v.number}
NUMBER = {name: number for number, name in STATUS.items()}
FINAL = {pb.LEAD_STATUS_WON, pb.LEAD_STATUS_LOST}

TRY_LOCK = "SELECT pg_try_advisory_xact_lock(%s)"
FIND_KEY = """SELECT fingerprint, state, code, response, expires_at
    FROM leads_idempotency_keys
    WHERE org = 'default' AND principal = %s AND method = %s AND key = %s"""
FIND_LEAD = """SELECT name, phone, email, status, version, created_by, created_at
    FROM leads WHERE org = 'default' AND lead_id = %s FOR UPDATE"""
INSERT_LEAD = """INSERT INTO leads (org, lead_id, name, phone, email, status, version,
    created_by, created_at, updated_at)
    VALUES ('default', %s, %s, %s, %s, 'new', 1, %s, %s, %s)"""
UPDATE_LEAD = """UPDATE leads SET status = %s, version = %s, updated_at = %s
    WHERE org = 'default' AND lead_id = %s AND version = %s"""
INSERT_CHANGE = """INSERT INTO lead_status_changes (org, lead_id, from_status, to_status, actor,
    changed_at, idempotency_key, version) VALUES ('default', %s, %s, %s, %s, %s, %s, %s)"""
STORE_KEY = """INSERT INTO leads_idempotency_keys (org, principal, method, key, fingerprint,
    state, code, response, resource_id, created_at, expires_at)
    VALUES ('default', %s, %s, %s, %s, 'done', %s, %s, NULL, %s, %s)
    ON CONFLICT (org, principal, method, key) DO UPDATE SET fingerprint = excluded.fingerprint,
    state = excluded.state, code = excluded.code, response = excluded.response,
    resource_id = excluded.resource_id, created_at = excluded.created_at,
    expires_at = excluded.expires_at"""
APPEND = """INSERT INTO leads_events (xid, position, occurred_at, type, actor, lead_id,
    subject_id, payload, org) SELECT pg_current_xact_id()::text::bigint,
    nextval('leads_events_position'), %s, %s, %s, %s, NULL, %s, 'default'"""


class Refused(Exception):
    """A call answered with an error status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


CODES = {code.value[0]: code for code in grpc.StatusCode}
Outcome = tuple[int, bytes]  # google.rpc.Code (0: success), the response or a Status
Write = Callable[[psycopg.AsyncConnection[Any], list[Any], str, str], Awaitable[Outcome]]


def refusal(code: int, message: str) -> Outcome:
    return code, status_pb2.Status(code=code, message=message).SerializeToString()


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(when)
    return out


def lock_of(method: str, key: str) -> int:
    digest = hashlib.sha256(f"{PRINCIPAL}\0{method}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def phone_e164(raw: str) -> str | None:
    """"+<8 to 15 digits>", spaces, dots, dashes and brackets dropped; None if not."""
    text = raw.strip()
    if not text.startswith("+") or len(text) > 32:
        return None
    if any(not (c.isdigit() or c in " .-()") for c in text[1:]):
        return None
    digits = "".join(c for c in text if c.isdigit())
    return "+" + digits if 8 <= len(digits) <= 15 else None


def move_refused(lead_id: str, target: pb.LeadStatus, expected: int | None,
                 row: Any) -> Outcome | None:
    """A final refusal of a move (stored under the key), or None if the lead may move."""
    if row is None:
        return refusal(code_pb2.NOT_FOUND, f"lead {lead_id!r} does not exist")
    current, version = NUMBER[row[3]], row[4]
    if expected is not None and expected != version:
        return refusal(code_pb2.ABORTED, f"lead {lead_id!r} is at version {version}")
    if current == target:
        return refusal(code_pb2.FAILED_PRECONDITION, f"lead {lead_id!r} is already {row[3]}")
    if current in FINAL or (target != pb.LEAD_STATUS_LOST and target < current):
        return refusal(code_pb2.FAILED_PRECONDITION,
                       f"lead {lead_id!r} cannot move from {row[3]} to {STATUS[target]}")
    return None


class Lean:
    def __init__(self, url: str, size: int, *, autocommit: bool = False) -> None:
        self.url = url
        self.size = size
        self.autocommit = autocommit
        self.pool: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()

    async def open(self) -> None:
        for conn in await asyncio.gather(*(self._connect() for _ in range(self.size))):
            self.pool.put_nowait(conn)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.url, connect_timeout=5,
                                                     autocommit=self.autocommit,
                                                     application_name="closed-loop-lean")

    async def close(self) -> None:
        while not self.pool.empty():
            await self.pool.get_nowait().close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; what it left open is rolled back, a broken one replaced."""
        conn = await self.pool.get()
        try:
            yield conn
        finally:
            if conn.broken or conn.closed:
                conn = await self._connect()
            elif conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await conn.rollback()
            self.pool.put_nowait(conn)

    async def _call(self, request: Any, context: grpc.aio.ServicerContext, method: str,
                    write: Write, also: tuple[str, tuple[Any, ...]] | None = None) -> bytes:
        """Claim the key (`also` runs in the same round trip, its rows go to `write`):
        a stored outcome is answered, else `write` makes the change and commits."""
        key = ""
        for name, value in context.invocation_metadata() or ():
            if name == "idempotency-key":
                key = str(value)
        fingerprint = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        replayed = False
        try:
            if not key or len(key) > 255:
                raise Refused(code_pb2.INVALID_ARGUMENT, "idempotency-key: 1 to 255 characters")
            async with self.connection() as conn:
                async with conn.pipeline():
                    locking = await conn.execute(TRY_LOCK, (lock_of(method, key),))
                    finding = await conn.execute(FIND_KEY, (PRINCIPAL, method, key))
                    extra = await conn.execute(*also) if also else None
                locked = bool((await locking.fetchone() or (False,))[0])
                row = await finding.fetchone()
                if row is not None and row[1] == "done" and row[4] > datetime.now(UTC):
                    if row[0] != fingerprint:
                        raise Refused(code_pb2.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED")
                    code, body, replayed = int(row[2]), bytes(row[3]), True
                elif not locked:  # another call holds the key and has stored nothing yet
                    raise Refused(code_pb2.ABORTED, "IDEMPOTENCY_KEY_IN_USE")
                else:
                    rows = await extra.fetchall() if extra is not None else []
                    code, body = await write(conn, rows, key, fingerprint)
            if replayed:
                await context.send_initial_metadata(REPLAYED)
            if code != 0:
                raise Refused(code, status_pb2.Status.FromString(body).message)
        except Refused as refused:
            await context.abort(CODES.get(refused.code, grpc.StatusCode.UNKNOWN), refused.message)
        return body

    async def create_lead(self, request: pb.CreateLeadRequest,
                          context: grpc.aio.ServicerContext) -> bytes:
        name, email = request.name.strip(), request.email.strip()
        phone = phone_e164(request.phone)
        if not name or len(name) > 200 or phone is None or len(email) > 254 or (
                email and "@" not in email):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "name (1 to 200 characters), phone (E.164) or email is invalid")

        async def write(conn: psycopg.AsyncConnection[Any], _: list[Any], key: str,
                        fingerprint: str) -> Outcome:
            now = datetime.now(UTC)
            lead_id = str(uuid.uuid4())
            at = stamp(now)
            lead = pb.Lead(lead_id=lead_id, name=name, phone=phone, email=email,
                           status=pb.LEAD_STATUS_NEW, version=1, created_by=PRINCIPAL,
                           created_at=at, updated_at=at)
            event = pb.Event(type="lead.created", occurred_at=at, actor=PRINCIPAL,
                             lead_id=lead_id, lead=lead)
            body = lead.SerializeToString()
            async with conn.pipeline():
                await conn.execute(INSERT_LEAD, (lead_id, name, phone, email, PRINCIPAL, now,
                                                 now))
                await conn.execute(STORE_KEY, (PRINCIPAL, CREATE, key, fingerprint, 0, body,
                                               now, now + TTL))
                await conn.execute(APPEND, (now, "lead.created", PRINCIPAL, lead_id,
                                            event.SerializeToString()))
                await conn.commit()
            return 0, body

        return await self._call(request, context, CREATE, write)

    async def update_lead_status(self, request: pb.UpdateLeadStatusRequest,
                                 context: grpc.aio.ServicerContext) -> bytes:
        lead_id, target = request.lead_id, request.status
        if not lead_id or len(lead_id) > 64 or target not in STATUS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "lead_id or status is invalid")
        expected = request.expected_version if request.HasField("expected_version") else None

        async def write(conn: psycopg.AsyncConnection[Any], rows: list[Any], key: str,
                        fingerprint: str) -> Outcome:
            now = datetime.now(UTC)
            refused = move_refused(lead_id, target, expected, rows[0] if rows else None)
            if refused is not None:  # final: stored under the key, as the service does
                async with conn.pipeline():
                    await conn.execute(STORE_KEY, (PRINCIPAL, UPDATE, key, fingerprint,
                                                   *refused, now, now + TTL))
                    await conn.commit()
                return refused
            name, phone, email, current, version, created_by, created_at = rows[0]
            at = stamp(now)
            lead = pb.Lead(lead_id=lead_id, name=name, phone=phone, email=email, status=target,
                           version=version + 1, created_by=created_by,
                           created_at=stamp(created_at), updated_at=at)
            change = pb.StatusChange(lead_id=lead_id, from_status=NUMBER[current],
                                     to_status=target, actor=PRINCIPAL, changed_at=at,
                                     idempotency_key=key, version=version + 1)
            event = pb.Event(type="lead.status_changed", occurred_at=at, actor=PRINCIPAL,
                             lead_id=lead_id, lead=lead, status_change=change)
            body = lead.SerializeToString()
            async with conn.pipeline():
                await conn.execute(UPDATE_LEAD, (STATUS[target], version + 1, now, lead_id,
                                                 version))
                await conn.execute(INSERT_CHANGE, (lead_id, current, STATUS[target], PRINCIPAL,
                                                   now, key, version + 1))
                await conn.execute(STORE_KEY, (PRINCIPAL, UPDATE, key, fingerprint, 0, body,
                                               now, now + TTL))
                await conn.execute(APPEND, (now, "lead.status_changed", PRINCIPAL, lead_id,
                                            event.SerializeToString()))
                await conn.commit()
            return 0, body

        return await self._call(request, context, UPDATE, write, also=(FIND_LEAD, (lead_id,)))


class Floor:
    """One database round trip a call and nothing else: `SELECT 1` on a pooled
    autocommit connection, behind a bare grpc.aio handler that answers the request's
    bytes. What no service making one round trip a call can do better than."""

    def __init__(self, pool: Lean) -> None:
        self.pool = pool  # autocommit: no BEGIN, no ROLLBACK around the SELECT

    async def round_trip(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")
        return request


def floor_handlers(floor: Floor) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(FLOOR_SERVICE, {
        "RoundTrip": grpc.unary_unary_rpc_method_handler(floor.round_trip),
    })


def handlers(lean: Lean) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "CreateLead": grpc.unary_unary_rpc_method_handler(
            lean.create_lead, request_deserializer=pb.CreateLeadRequest.FromString),
        "UpdateLeadStatus": grpc.unary_unary_rpc_method_handler(
            lean.update_lead_status, request_deserializer=pb.UpdateLeadStatusRequest.FromString),
    })


async def serve(port: int, url: str, size: int) -> None:
    lean, floor = Lean(url, size), Floor(Lean(url, size, autocommit=True))
    await lean.open()
    await floor.pool.open()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handlers(lean), floor_handlers(floor)))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(json.dumps({"port": bound}), flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)
        await lean.close()
        await floor.pool.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.lean")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--database-url", required=True,
                        help="a migrated leads database, as libpq takes it (postgresql://…)")
    parser.add_argument("--pool", type=int, default=10, help="connections (default 10)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.database_url, args.pool))


if __name__ == "__main__":
    main(sys.argv[1:])
