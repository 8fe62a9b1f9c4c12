"""Statements compiled once for PostgreSQL, and never served for another statement."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import bindparam, column, table, update

from services.shared import sql

LEADS = table("leads", column("lead_id"), column("status"))
APPOINTMENTS = table("appointments", column("appointment_id"), column("status"))


def test_a_statement_is_compiled_once_per_set_of_parameter_names() -> None:
    statement = update(LEADS).where(LEADS.c.lead_id == bindparam("b_lead_id"))
    first = sql.postgres_sql(statement, {"status": "won", "b_lead_id": "x"})
    assert first == "UPDATE leads SET status=%(status)s WHERE leads.lead_id = %(b_lead_id)s"
    assert sql.postgres_sql(statement, {"status": "lost", "b_lead_id": "y"}) is first
    assert "status" not in sql.postgres_sql(statement, {"lead_id": "z", "b_lead_id": "y"})[:30]


# Run in a fresh interpreter, whose heap hands a freed address to the next
# object of the same size at once (this one's, after many tests, may not).
TAKING_ITS_PLACE = """
import gc
from sqlalchemy import column, table, update
from services.shared import sql
leads = table("leads", column("status"))
appointments = table("appointments", column("status"))
gone = update(leads)
address = id(gone)
assert sql.postgres_sql(gone, {"status": 1}) == "UPDATE leads SET status=%(status)s"
del gone
gc.collect()
alive = []  # kept, so that each new statement gets another address
for _ in range(100_000):
    statement = update(appointments)
    alive.append(statement)
    if id(statement) == address:
        print(sql.postgres_sql(statement, {"status": 1}))
        break
else:
    print("no new statement took the collected one's address")
"""


def test_a_collected_statements_sql_is_never_served_for_one_that_takes_its_place() -> None:
    # Several services in one process (the tests, a bench) build and drop
    # statements; a new one may be given a collected one's address, and so its id.
    done = subprocess.run([sys.executable, "-c", TAKING_ITS_PLACE], capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == "UPDATE appointments SET status=%(status)s"


def test_a_guarded_write_fails_in_the_database_when_it_changes_the_wrong_number_of_rows(
) -> None:
    guarded = sql.Guarded(update(LEADS).where(LEADS.c.lead_id == bindparam("b")), rows=1)
    text = sql.postgres_sql(guarded, {"status": "won", "b": "x"})
    assert text.startswith("WITH guarded AS (UPDATE leads SET status=%(status)s WHERE")
    assert "count(*) = 1 THEN 0" in text and "::int" in text
