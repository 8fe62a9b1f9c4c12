"""The leads use cases with fakes of their unit of work: no database, no server."""

from __future__ import annotations

import copy
from datetime import datetime

import pytest

from services.leads import messages, service
from services.leads.domain import (
    BatchRefused,
    InvalidStatusTransition,
    Lead,
    LeadCreated,
    LeadEvent,
    LeadNotFound,
    LeadStatus,
    LeadStatusChanged,
    StatusChange,
)
from services.shared.auth import Caller
from services.shared.errors import InvalidArgument
from services.shared.idempotency import Key, KeyReused, Stored
from services.shared.paging import PageRequest
from services.shared.uow import ConcurrentChange
from tests.unit.fakes import FakeDatabase, FakeRows, FakeUnitOfWork, guarded

ALICE, BOB = Caller("alice"), Caller("bob")
S = LeadStatus
CREATE = "/crm.leads.v1.LeadsService/CreateLead"
UPDATE = "/crm.leads.v1.LeadsService/UpdateLeadStatus"
BATCH = "/crm.leads.v1.LeadsService/BatchUpdateLeadStatus"


class FakeLeadRepository(FakeRows[Lead], service.LeadRepository):
    def __init__(self, uow: FakeUnitOfWork) -> None:
        super().__init__(uow, "leads", lambda lead: lead.lead_id, LeadNotFound)
        self.leads = self.rows
        self.changes_of = uow.db.table("changes")

    async def get_many(self, lead_ids: list[str], *, for_update: bool = False
                       ) -> dict[str, Lead]:
        return {i: await self.get(i) for i in sorted(lead_ids) if i in self.leads}

    async def save(self, lead: Lead, change: StatusChange) -> None:
        row = copy.deepcopy(lead)
        self.uow.stage(lambda: guarded(self.leads, lead.lead_id, change.version - 1, row))
        self.uow.stage(lambda: self.changes_of.setdefault(lead.lead_id, []).append(change))

    async def newest(self, status: LeadStatus | None, after: tuple[datetime, str] | None,
                     limit: int, *, phone: str | None = None) -> list[Lead]:
        found = sorted((x for x in self.leads.values()
                        if status in (None, x.status) and phone in (None, x.phone)),
                       key=lambda x: (x.created_at, x.lead_id), reverse=True)
        if after is not None:
            found = [x for x in found if (x.created_at, x.lead_id) < after]
        return copy.deepcopy(found[:limit])

    async def changes(self, lead_id: str, after: int | None, limit: int
                      ) -> list[tuple[int, StatusChange]]:
        trail = list(enumerate(self.changes_of.get(lead_id, []), start=1))
        return [(i, c) for i, c in trail if after is None or i > after][:limit]


class FakeLeadsUnitOfWork(FakeUnitOfWork):
    def __init__(self, db: FakeDatabase, respond: object = None) -> None:
        super().__init__(db, messages.lead if respond is None else respond)  # type: ignore[arg-type]
        self.leads = FakeLeadRepository(self)

    def recorded_events(self) -> list[LeadEvent]:
        return [e for lead in self.leads.seen.values() for e in lead.pull_events()]


@pytest.fixture
def db() -> FakeDatabase:
    return FakeDatabase()


def uow(db: FakeDatabase, respond: object = None) -> FakeLeadsUnitOfWork:
    return FakeLeadsUnitOfWork(db, respond)


def key(method: str, value: str, fingerprint: str = "f") -> Key:
    return Key(method, value, fingerprint)


async def created(db: FakeDatabase, name: str = "Ada Lovelace", by: Caller = ALICE) -> Lead:
    lead = await service.create_lead(service.CreateLead(
        name=name, phone="+1 415 555 0123", email="", region="US", caller=by,
        key=key(CREATE, f"create-{name}")), uow(db))
    assert isinstance(lead, Lead)
    return lead


async def moved(db: FakeDatabase, lead_id: str, status: LeadStatus, value: str = "move",
                by: Caller = ALICE) -> Lead | Stored:
    return await service.update_status(service.UpdateStatus(
        lead_id=lead_id, status=status, caller=by, key=key(UPDATE, value)), uow(db))


async def test_a_lead_is_created_new_by_its_caller_in_one_committed_transaction(
    db: FakeDatabase,
) -> None:
    lead = await created(db)
    assert (lead.status, lead.version, lead.created_by) == (S.NEW, 1, "alice")
    assert db.table("leads")[lead.lead_id].name == "Ada Lovelace"
    assert db.committed() == [(ALICE, False, True)]
    assert [type(e) for e in db.events] == [LeadCreated]


async def test_a_replay_returns_the_stored_outcome_and_runs_nothing_again(
    db: FakeDatabase,
) -> None:
    command = service.CreateLead(name="Ada", phone="+14155550123", email="", region="US",
                                 caller=ALICE, key=key(CREATE, "same"))
    first = await service.create_lead(command, uow(db))
    again = await service.create_lead(command, uow(db))
    assert isinstance(first, Lead) and isinstance(again, Stored) and again.replayed
    assert again.outcome.response(CREATE) == messages.lead(first)
    assert len(db.table("leads")) == 1 and len(db.events) == 1


async def test_the_same_key_with_another_request_is_refused_as_reused(db: FakeDatabase) -> None:
    await created(db, "Ada")
    with pytest.raises(KeyReused):
        await service.create_lead(service.CreateLead(
            name="Ada", phone="+14155550123", email="", region="US", caller=ALICE,
            key=key(CREATE, "create-Ada", fingerprint="another request")), uow(db))


async def test_keys_are_the_callers_own(db: FakeDatabase) -> None:
    await created(db, "Ada", by=ALICE)
    bobs = await created(db, "Ada", by=BOB)  # the same key value, another caller
    assert bobs.created_by == "bob" and len(db.table("leads")) == 2


async def test_a_move_saves_the_lead_and_its_audit_record_as_the_caller(
    db: FakeDatabase,
) -> None:
    lead = await created(db)
    after = await moved(db, lead.lead_id, S.QUALIFIED, "move-1", by=BOB)
    assert isinstance(after, Lead) and (after.status, after.version) == (S.QUALIFIED, 2)
    (change,) = db.table("changes")[lead.lead_id]
    assert (change.actor, change.idempotency_key, change.to_status) == ("bob", "move-1",
                                                                        S.QUALIFIED)
    assert isinstance(db.events[-1], LeadStatusChanged)


async def test_a_refused_move_commits_nothing(db: FakeDatabase) -> None:
    lead = await created(db)
    await moved(db, lead.lead_id, S.WON, "won")
    with pytest.raises(InvalidStatusTransition):
        await moved(db, lead.lead_id, S.CONTACTED, "back")
    assert db.table("leads")[lead.lead_id].status is S.WON
    assert [committed for *_, committed in db.transactions] == [True, True, False]


async def test_a_move_of_a_lead_that_does_not_exist_is_not_found(db: FakeDatabase) -> None:
    with pytest.raises(LeadNotFound):
        await moved(db, "nobody", S.CONTACTED)


async def test_a_batch_moves_every_lead_that_can_and_reports_those_already_there(
    db: FakeDatabase,
) -> None:
    a, b, c = [await created(db, name) for name in "abc"]
    await moved(db, c.lead_id, S.QUALIFIED)
    result = await service.batch_update_status(service.BatchUpdateStatus(
        lead_ids=[a.lead_id, b.lead_id, c.lead_id], status=S.QUALIFIED, caller=ALICE,
        key=key(BATCH, "batch")), uow(db, messages.batch_result))
    assert isinstance(result, service.BatchResult)
    assert {x.lead_id for x in result.updated} == {a.lead_id, b.lead_id}
    assert result.unchanged == [c.lead_id]


async def test_a_batch_with_one_refusal_moves_no_lead_and_names_every_offender(
    db: FakeDatabase,
) -> None:
    a, won = await created(db, "a"), await created(db, "won")
    await moved(db, won.lead_id, S.WON)
    with pytest.raises(BatchRefused) as refused:
        await service.batch_update_status(service.BatchUpdateStatus(
            lead_ids=[a.lead_id, won.lead_id, "missing"], status=S.NEGOTIATING, caller=ALICE,
            key=key(BATCH, "batch")), uow(db, messages.batch_result))
    assert [lead_id for lead_id, _ in refused.value.refusals] == [won.lead_id, "missing"]
    assert db.table("leads")[a.lead_id].status is S.NEW


async def test_a_stale_write_is_refused_by_its_version_guard(db: FakeDatabase) -> None:
    lead = await created(db)
    stale = copy.deepcopy(db.table("leads")[lead.lead_id])
    await moved(db, lead.lead_id, S.CONTACTED)
    unit = uow(db)
    change = stale.move_to(S.QUALIFIED, actor="alice", now=stale.updated_at,
                           idempotency_key="k")
    with pytest.raises(ConcurrentChange):
        async with unit.for_caller(ALICE):
            await unit.leads.save(stale, change)
            await unit.commit(outcome=stale)


async def test_leads_list_newest_first_page_by_page_in_a_read_only_transaction(
    db: FakeDatabase,
) -> None:
    names = [f"Lead {i}" for i in range(5)]
    for name in names:
        await created(db, name)
    seen: list[str] = []
    token = ""
    while True:
        page = await service.list_leads(service.ListLeads(
            status=None, page=PageRequest(2, token), caller=BOB), uow(db))
        seen += [x.name for x in page.items]
        token = page.next_token
        if not token:
            break
    by_age = sorted(db.table("leads").values(), key=lambda x: (x.created_at, x.lead_id))
    assert seen == [x.name for x in reversed(by_age)]
    assert db.transactions[-1] == (BOB, True, False)


async def test_a_token_is_refused_for_another_filter(db: FakeDatabase) -> None:
    for name in ("a", "b"):
        await created(db, name)
    first = await service.list_leads(service.ListLeads(
        status=None, page=PageRequest(1, ""), caller=ALICE), uow(db))
    with pytest.raises(InvalidArgument) as refused:
        await service.list_leads(service.ListLeads(
            status=S.WON, page=PageRequest(1, first.next_token), caller=ALICE), uow(db))
    assert [v.field for v in refused.value.violations] == ["page_token"]


async def test_the_audit_trail_of_an_unknown_lead_is_not_found_and_of_a_new_one_empty(
    db: FakeDatabase,
) -> None:
    lead = await created(db)
    trail = await service.list_status_changes(service.ListStatusChanges(
        lead_id=lead.lead_id, page=PageRequest(0, ""), caller=ALICE), uow(db))
    assert trail.items == [] and trail.next_token == ""
    with pytest.raises(LeadNotFound):
        await service.list_status_changes(service.ListStatusChanges(
            lead_id="nobody", page=PageRequest(0, ""), caller=ALICE), uow(db))
