"""Exactly one effect per idempotency key (after Stripe and the IETF draft).

A key is scoped to its caller (the org and the principal) and RPC. The first call with a
key runs; its final outcome (success or a final refusal) is stored in the same
transaction as its effect, and a later call with the same key and the same
request gets that outcome back, marked `idempotent-replayed: true`, for the
TTL. The same key with a different request is IDEMPOTENCY_KEY_REUSED.
Transient outcomes (UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED…) are not stored,
so a retry runs again.

Concurrent calls with one key: on PostgreSQL the first holds a transaction
advisory lock on the key, and a second that arrives meanwhile is refused at
once with ABORTED / IDEMPOTENCY_KEY_IN_USE (retry it shortly to get the
outcome). On SQLite writes are serialized anyway, so the second waits for the
first's commit and replays its outcome. A call whose external effect is still
under way (a `pending` key, as when an SMS is being handed to the provider)
is IDEMPOTENCY_KEY_IN_USE on either.

This module is the key table and its rows; a use case takes its key as a step
of its unit of work (`uow.keys.claim`, `uow.commit(outcome=…)`, see
services.shared.uow).
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from google.rpc import status_pb2
from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from services.shared import errors, sql, status
from services.shared.auth import Caller
from services.shared.context import Call
from services.shared.db import utcnow
from services.shared.orgs import SYSTEM_SCOPE
from services.shared.schema import SharedTables

_TRY_LOCK = sql.raw("SELECT pg_try_advisory_xact_lock(%(lock)s)")
_WAIT_FOR_LOCK = sql.raw("SELECT pg_advisory_xact_lock(%(lock)s)")
# A claim sent ahead of a unit of work's next statements (`claim_ahead`) fails, and
# so aborts them, unless the key is free; what its failure says.
KEY_NOT_FREE = "crm key not free"
_LOCK_OR_FAIL = sql.raw(
    "SELECT "
    + sql.fail_unless("taken", KEY_NOT_FREE, "'its lock is held (taken: ' || taken || ')'")
    + " FROM (SELECT pg_try_advisory_xact_lock(%(lock)s) AS taken) AS attempt")
MAX_KEY_LENGTH = 255
DONE, PENDING = "done", "pending"
# Outcomes a process keeps in memory to answer replays without the database.
REMEMBERED_OUTCOMES = 10_000


class KeyMissing(errors.InvalidArgument):
    reason = "IDEMPOTENCY_KEY_MISSING"

    def __init__(self) -> None:
        super().__init__(
            "idempotency-key: this call changes state and needs an idempotency-key "
            "(HTTP: Idempotency-Key)",
            violations=[errors.FieldViolation("idempotency-key", "required on mutating calls")],
        )


class KeyInvalid(errors.InvalidArgument):
    reason = "IDEMPOTENCY_KEY_INVALID"

    def __init__(self) -> None:
        description = f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters"
        super().__init__(
            f"idempotency-key: {description}",
            violations=[errors.FieldViolation("idempotency-key", description)],
        )


class KeyReused(errors.InvalidArgument):
    reason = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self) -> None:
        super().__init__(
            "idempotency-key: this key was used with a different request; "
            "use a new key for a new request",
            violations=[
                errors.FieldViolation("idempotency-key", "already used for another request")
            ],
        )


class KeyInUse(errors.Aborted):
    reason = "IDEMPOTENCY_KEY_IN_USE"

    def __init__(self) -> None:
        super().__init__(
            "a call with this idempotency key is still running; retry shortly for its outcome"
        )


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(33 <= ord(c) <= 126 for c in key):
        raise KeyInvalid()
    return key


def fingerprint(request: Message) -> str:
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()


@dataclass(frozen=True)
class Key:
    """The idempotency key of one call: the RPC it was sent to, the key itself, and
    the fingerprint of its request (None: take the key whatever the request)."""

    method: str
    value: str
    fingerprint: str | None

    @classmethod
    def of(cls, call: Call, request: Message) -> Key:
        return cls(call.method, call.idempotency_key, fingerprint(request))


@dataclass(frozen=True)
class Outcome:
    """What a call answered: a response on success, else a google.rpc.Status."""

    code: int
    body: bytes

    @classmethod
    def success(cls, response: Message) -> Outcome:
        return cls(0, response.SerializeToString())

    @classmethod
    def failure(cls, failed: status_pb2.Status) -> Outcome:
        return cls(failed.code, failed.SerializeToString())

    @classmethod
    def refusal(cls, error: errors.DomainError, domain: str) -> Outcome | None:
        """A refusal as stored under its key, or None if it is transient (not stored)."""
        refused = status.to_status(error, domain)
        return cls.failure(refused) if status.is_final(refused) else None

    def response(self, method: str) -> Message:
        """The stored response of a success, as the message `method` answers."""
        return _response_class_of(method).FromString(self.body)

    def status(self) -> status_pb2.Status:
        """The stored google.rpc.Status of a refusal."""
        return status_pb2.Status.FromString(self.body)


@dataclass(frozen=True)
class Stored:
    """An outcome stored under the call's key, to answer as it was stored: a replay,
    unless this very call stored it (`replayed=False`)."""

    outcome: Outcome
    replayed: bool = True


@dataclass(frozen=True)
class Pending:
    """A key whose call is under way, what it is creating, and until when the
    call holds it (its lease); past the lease, a retry may take the call over."""

    resource_id: str
    created_at: datetime
    lease_until: datetime
    fingerprint: str = ""

    def expired(self, now: datetime) -> bool:
        return self.lease_until <= now


@dataclass(frozen=True)
class _Remembered:
    fingerprint: str | None
    outcome: Outcome
    expires_at: datetime


class IdempotencyStore:
    """One service's idempotency keys: their rows, and recent outcomes in memory."""

    def __init__(self, tables: SharedTables, *, ttl_seconds: int, postgres: bool) -> None:
        self.keys = tables.idempotency_keys
        self.ttl = timedelta(seconds=ttl_seconds)
        self.postgres = postgres
        # A stored outcome never changes until it expires (only an expired row is
        # ever replaced), so replays of recent keys are answered from memory.
        self._remembered: OrderedDict[tuple[str, ...], _Remembered] = OrderedDict()
        k = self.keys.c
        self._find = select(
            k.fingerprint, k.state, k.code, k.response, k.resource_id, k.created_at, k.expires_at
        ).where(k.org == bindparam("org"), k.principal == bindparam("principal"),
                k.method == bindparam("method"), k.key == bindparam("key"))
        upsert = postgresql.insert(self.keys) if postgres else sqlite.insert(self.keys)
        self._record = upsert.on_conflict_do_update(
            index_elements=[k.org, k.principal, k.method, k.key],
            set_={name: getattr(upsert.excluded, name) for name in (
                "fingerprint", "state", "code", "response", "resource_id", "created_at",
                "expires_at")},
        )
        # Fails unless the key has no row but an expired outcome (run after its lock
        # is taken, in a statement of its own: its snapshot then sees the commit of
        # whoever held the lock before).
        self._free_or_fail = sql.raw(
            "SELECT " + sql.fail_unless(
                "held = 0", KEY_NOT_FREE, "held || ' row holds an outcome or a call under way'")
            + f" FROM (SELECT count(*) AS held FROM {self.keys.name} WHERE org = %(org)s AND "
            "principal = %(principal)s AND method = %(method)s AND key = %(key)s AND NOT "
            "(state = %(done)s AND expires_at <= %(now)s)) AS found")
        self._forget = delete(self.keys).where(
            k.org == bindparam("org"), k.principal == bindparam("principal"),
            k.method == bindparam("method"), k.key == bindparam("key"))

    async def claim(
        self, conn: AsyncConnection, caller: Caller, key: Key, *, wait: bool = False,
    ) -> Outcome | Pending | None:
        """Take the key for this transaction, and say what it holds.

        A stored outcome is returned even while another call holds the key:
        replays never queue behind each other. Otherwise a call arriving while
        another holds the key is refused at once (KeyInUse); a call finishing
        what it started under the key (`wait`) waits instead, as others hold
        the lock only for a moment. A key stored for another request is
        KeyReused. On PostgreSQL the lock and the read go out in one round
        trip, the read after the lock, so it sees any outcome committed by the
        call that held it.
        """
        scope = _scope(caller, key)
        if self.postgres:
            lock = lock_of(caller, key)
            locking = _WAIT_FOR_LOCK if wait else _TRY_LOCK
            locked_rows, found_rows = await sql.batch(
                conn, [(locking, {"lock": lock}), (self._find, scope)])
            locked = wait or bool(locked_rows[0][0])
            row = found_rows[0] if found_rows else None
        else:  # SQLite: this transaction is the only writer.
            locked = True
            found_rows = await sql.fetch(conn, self._find, scope)
            row = found_rows[0] if found_rows else None
        found = self._read(row, caller, key)
        if not locked and not isinstance(found, Outcome):
            raise KeyInUse()
        return found

    def claim_ahead(self, caller: Caller, key: Key
                    ) -> list[tuple[sql.Statement, sql.Params]]:
        """PostgreSQL: the key's claim as statements to send ahead of the unit of work's
        next ones, in the same round trip, for a call that expects the key to be new.
        They take the key's lock, then fail unless the key is free: a failure
        (`claim_failed`) aborts what rode with them, and the call runs again claiming
        at once (`claim`), which tells a replay, a call under way and a reused key apart.
        """
        scope = _scope(caller, key)
        return [(_LOCK_OR_FAIL, {"lock": lock_of(caller, key)}),
                (self._free_or_fail, {**scope, "done": DONE, "now": utcnow()})]

    def waiting_lock(self, caller: Caller, key: Key) -> tuple[sql.Statement, sql.Params]:
        """PostgreSQL: the statement that takes the key's lock, waiting for it."""
        return _WAIT_FOR_LOCK, {"lock": lock_of(caller, key)}

    async def peek(self, conn: AsyncConnection, caller: Caller, key: Key
                   ) -> Outcome | Pending | None:
        """What the key holds, read without taking it."""
        rows = await sql.fetch(conn, self._find, _scope(caller, key))
        return self._read(rows[0] if rows else None, caller, key)

    def _read(self, row: Any, caller: Caller, key: Key) -> Outcome | Pending | None:
        if row is None:
            return None
        stored_fingerprint, state, code, response, resource_id, created_at, expires_at = row
        if state == DONE and expires_at <= utcnow():
            return None
        if key.fingerprint is not None and stored_fingerprint != key.fingerprint:
            raise KeyReused()
        if state == PENDING:
            return Pending(resource_id or "", created_at, expires_at, stored_fingerprint)
        outcome = Outcome(code, bytes(response))
        self.remember(caller, key, outcome, expires_at, stored_fingerprint)
        return outcome

    def recall(self, caller: Caller, key: Key) -> Outcome | None:
        """The outcome stored under this key, if this process remembers it."""
        name = tuple(_scope(caller, key).values())
        found = self._remembered.get(name)
        if found is None:
            return None
        if found.expires_at <= utcnow():
            del self._remembered[name]
            return None
        if key.fingerprint is not None and found.fingerprint != key.fingerprint:
            raise KeyReused()
        self._remembered.move_to_end(name)
        return found.outcome

    def remember(self, caller: Caller, key: Key, outcome: Outcome,
                 expires_at: datetime | None = None, stored_fingerprint: str | None = None,
                 ) -> None:
        """Keep a committed outcome in memory, for replays (least recently used go first)."""
        name = tuple(_scope(caller, key).values())
        self._remembered[name] = _Remembered(stored_fingerprint or key.fingerprint, outcome,
                                             expires_at or utcnow() + self.ttl)
        self._remembered.move_to_end(name)
        if len(self._remembered) > REMEMBERED_OUTCOMES:
            self._remembered.popitem(last=False)

    def record(self, caller: Caller, key: Key, outcome: Outcome | Pending
               ) -> tuple[sql.Statement, sql.Params]:
        """The write that stores the key's outcome, or marks it pending until its
        lease's end; an expired or pending row is replaced."""
        now = utcnow()
        done = isinstance(outcome, Outcome)
        return self._record, {
            **_scope(caller, key),
            "fingerprint": key.fingerprint or "",
            "state": DONE if done else PENDING,
            "code": outcome.code if isinstance(outcome, Outcome) else 0,
            "response": outcome.body if isinstance(outcome, Outcome) else b"",
            "resource_id": None if isinstance(outcome, Outcome) else outcome.resource_id,
            "created_at": now,
            "expires_at": now + self.ttl if isinstance(outcome, Outcome) else outcome.lease_until,
        }

    def forget(self, caller: Caller, key: Key) -> tuple[sql.Statement, sql.Params]:
        """The write that drops the key: its call was abandoned and had no effect."""
        return self._forget, _scope(caller, key)

    async def purge(self, conn: AsyncConnection, *, limit: int = 1000) -> int:
        """Delete up to `limit` expired keys of every org (on PostgreSQL the write
        transaction is put in the system scope here); returns how many. Pending
        keys stay."""
        if self.postgres:
            sql.scope(conn, SYSTEM_SCOPE, every_statement=False)
        k = self.keys.c
        expired = (
            select(k.org, k.principal, k.method, k.key)
            .where(k.expires_at < utcnow(), k.state == DONE)
            .limit(limit)
        )
        rows = await sql.rows(conn, expired)
        for row in rows:
            await conn.execute(self._forget, {"org": row.org, "principal": row.principal,
                                              "method": row.method, "key": row.key})
        return len(rows)

    async def pending(self, conn: AsyncConnection, *, lease_ended_before: datetime,
                      limit: int = 100) -> list[tuple[Caller, Key, str]]:
        """Pending keys whose lease ended before the given time, of every org the
        connection's scope sees: (caller, key, resource id), the caller in its org."""
        k = self.keys.c
        rows = await sql.rows(
            conn,
            select(k.org, k.principal, k.method, k.key, k.fingerprint, k.resource_id)
            .where(k.state == PENDING, k.expires_at < lease_ended_before)
            .order_by(k.expires_at)
            .limit(limit)
        )
        return [(Caller(row.principal, org=row.org), Key(row.method, row.key, row.fingerprint),
                 row.resource_id or "") for row in rows]


def claim_failed(error: BaseException) -> bool:
    """Whether a database error is a claim ahead's refusal (the key was not free)."""
    return sql.failed_for(error, KEY_NOT_FREE)


def lock_of(caller: Caller, key: Key) -> int:
    """The advisory lock a call holds while it has the key (PostgreSQL)."""
    digest = hashlib.sha256("\0".join(_scope(caller, key).values()).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _scope(caller: Caller, key: Key) -> dict[str, str]:
    """What a key is scoped to, as its row's primary key: the caller's org and
    principal, and the RPC."""
    return {"org": caller.org, "principal": caller.principal, "method": key.method,
            "key": key.value}


@functools.cache
def _response_class_of(method: str) -> type[Message]:
    found = descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", "."))
    return message_factory.GetMessageClass(found.output_type)
