"""Primary keys that lead with the org, as each service's key migration makes them
(frozen, as `migration_orgs`: a later change is a new migration, never an edit).

A row looked up by id is looked up in its org too (`WHERE id = … AND org = …`).
Keyed by the id alone, such a table had indexes that start with the org beside
its key, and until autovacuum first analyzed it (a new database's first minute,
or a table nothing had been written to when it was analyzed) PostgreSQL's planner
rated those as good as the key: a connection's cached plan for an update by id
walked every row of the org. Keyed by (org, id), the lookup matches the key whole
and nothing else can look as good (`tests/integration/test_migrations.py`).

`key_with_org` rekeys a table and re-points the foreign keys of the tables that
refer to it (an audit trail) at the new key, (org, id) to (org, id). On SQLite,
which cannot alter a key, each table is made again; migrations run there with
foreign keys off, so the order does not matter.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from alembic import op


@dataclass(frozen=True)
class Referrer:
    """A table whose `column` refers to the rekeyed table's id."""

    table: str
    column: str
    # Its foreign key's name on PostgreSQL (unnamed on SQLite).
    constraint: str

    def new_constraint(self, referred: str) -> str:
        return f"fk_{self.table}_{referred}"


# What SQLite's unnamed foreign keys are called while a batch alters their table.
_SQLITE_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s"}


def _sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def key_with_org(table: str, id_column: str, *, old_key: str,
                 referrers: Sequence[Referrer] = ()) -> None:
    """Key `table` by (org, id_column) as `pk_<table>` (its key was `old_key` on
    PostgreSQL), and its referrers' foreign keys by (org, their column)."""
    key = f"pk_{table}"
    if _sqlite():
        with warnings.catch_warnings():
            # SQLAlchemy warns that the new key is not the reflected one: as it must.
            warnings.filterwarnings("ignore", "Table '_alembic_tmp_", sa.exc.SAWarning)
            with op.batch_alter_table(table, recreate="always") as batch:
                batch.create_primary_key(key, ["org", id_column])
            for referrer in referrers:
                with op.batch_alter_table(referrer.table, recreate="always",
                                          naming_convention=_SQLITE_NAMES) as batch:
                    batch.drop_constraint(f"fk_{referrer.table}_{referrer.column}",
                                          type_="foreignkey")
                    batch.create_foreign_key(referrer.new_constraint(table), table,
                                             ["org", referrer.column], ["org", id_column])
        return
    for referrer in referrers:
        op.drop_constraint(referrer.constraint, referrer.table, type_="foreignkey")
    op.drop_constraint(old_key, table, type_="primary")
    op.create_primary_key(key, table, ["org", id_column])
    for referrer in referrers:
        op.create_foreign_key(referrer.new_constraint(table), referrer.table, table,
                              ["org", referrer.column], ["org", id_column])
