"""Group commit's switch and its bookkeeping of idempotency keys within a group
(the grouping itself is tested on PostgreSQL: tests/integration/test_group_commit.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from services.shared import group_commit, sql
from services.shared.config import ConfigError, Settings
from services.shared.db import Database

TOKENS = "alice:alice-token-0123456789"


def settings(**env: str) -> Settings:
    return Settings.from_env("leads", {"CRM_API_TOKENS": TOKENS, **env})


def test_grouping_is_on_by_default_and_crm_group_commit_caps_a_group() -> None:
    assert settings().group_commit == 32
    assert settings(CRM_GROUP_COMMIT="0").group_commit == 0
    assert settings(CRM_GROUP_COMMIT="8").group_commit == 8
    with pytest.raises(ConfigError, match="CRM_GROUP_COMMIT: expected an integer from 0 to 60"):
        settings(CRM_GROUP_COMMIT="61")


async def test_only_postgresql_with_grouping_on_has_a_committer(tmp_path: Path) -> None:
    grouped = Database("postgresql+psycopg://127.0.0.1/x", group_commit=16)
    alone = Database("postgresql+psycopg://127.0.0.1/x", group_commit=1)
    embedded = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", group_commit=32)
    try:
        found = group_commit.committer(grouped)
        assert found is not None
        assert found.most == 16
        assert group_commit.committer(grouped) is found  # one per Database
        assert group_commit.committer(alone) is None
        assert group_commit.committer(embedded) is None
    finally:
        for db in (grouped, alone, embedded):
            await db.dispose()


class Conn:
    """Stands for a connection: only its scope is looked at."""


def seats(count: int) -> list[group_commit.Seat]:
    conn: Any = Conn()
    group = group_commit._Group(conn, asyncio.get_running_loop().create_future())
    return [group_commit.Seat(conn, group, f"s{i}") for i in range(count)]


async def test_a_key_an_earlier_member_holds_is_refused_to_a_later_one() -> None:
    first, second = seats(2)
    assert first.take_key(7)
    assert first.take_key(7)  # its own again
    assert not second.take_key(7)
    assert second.holds_other(7) and not first.holds_other(7)
    assert second.take_key(8)


async def test_a_member_undone_gives_its_keys_back_and_leaves_its_rollback_to_send() -> None:
    first, second = seats(2)
    sql.scope(first.conn, "acme", every_statement=False,
              preamble=[(sql.raw("SAVEPOINT s0"), {})])
    assert first.take_key(7)
    sql._scoping(first.conn)[1]()  # its first statement went out, with the savepoint
    first.hand_over()
    assert first.group is not None
    assert first.group.handed.is_set()
    assert [s.text for s, _ in first.group.after] == ["ROLLBACK TO SAVEPOINT s0"]
    assert second.take_key(7)


async def test_a_member_that_sent_nothing_leaves_what_was_to_be_sent() -> None:
    first, second = seats(2)
    assert first.group is not None
    pending = [(sql.raw("ROLLBACK TO SAVEPOINT s9"), {})]
    first.group.after = list(pending)
    sql.scope(second.conn, "acme", every_statement=False,
              preamble=[*pending, (sql.raw("SAVEPOINT s1"), {})])
    second.hand_over()  # never sent a statement
    assert first.group.after == pending


async def test_members_are_held_back_only_while_the_groups_subtransactions_leave_room() -> None:
    (first,) = seats(1)
    group = first.group
    assert group is not None
    group.flushes_left = 1
    assert group.room_to_hold()  # the first held back: a flush of its own is due
    group.held.append(group_commit._Held([], "s0", asyncio.get_running_loop().create_future()))
    assert group.room_to_hold()  # rides with the flush already due
    group.held.clear()  # that flush went out
    assert not group.room_to_hold()  # another would take a 65th subtransaction
    assert group.flushes_left == 0

