"""The append path as SQL, under pgbench: no Python in the way.

    python -m tests.bench.append [--clients 32] [--duration 5] [--rounds 2]

Each script is the transaction the leads service sends for a CreateLead (the
same statements as `tests.bench.lean`, which mirrors the service): the key's
advisory lock and lookup, the lead, the key's stored outcome, and the event:

- `log`: the event as the service appends it now (the writing transaction's
  xid and a position from the sequence: no row shared by the writers);
- `no log`: the same transaction without the event, the ceiling;
- `head row`: the event as it was appended before (the log's head row moved
  under its lock, and a NOTIFY per transaction), for comparison.

The service's NOTIFY is not in the scripts: it goes out after the commit, on
a connection of its own, one in flight per process for any number of commits
(services.shared.events); pgbench's 32 clients would stand for 32 processes.

Each script runs on a fresh leads database, migrated by the service itself,
in rounds that take turns. Prints one JSON document: tps per script and round.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from tests.bench.report import stand_alone
from tests.bench.servers import ADMIN_URL, ROOT, create_databases, drop_databases

PGBENCH_PATHS = ("/usr/lib/postgresql/15/bin/pgbench", "pgbench")

TRANSACTION = """\\set k random(1, 9000000000000000000)
BEGIN;
SELECT pg_try_advisory_xact_lock(:k);
SELECT fingerprint, state, code, response, expires_at FROM leads_idempotency_keys
  WHERE org = 'default' AND principal = 'bench' AND method = 'CreateLead' AND key = :k::text;
INSERT INTO leads (org, lead_id, name, phone, email, status, version, created_by, created_at,
  updated_at) VALUES ('default', :k::text, 'Ada Lovelace', '+14155550123', 'ada@example.com',
  'new', 1, 'bench', now(), now());
INSERT INTO leads_idempotency_keys (org, principal, method, key, fingerprint, state, code,
  response, resource_id, created_at, expires_at)
  VALUES ('default', 'bench', 'CreateLead', :k::text, 'f', 'done', 0, '\\x0a24', NULL, now(),
  now() + interval '1 day')
  ON CONFLICT (org, principal, method, key) DO UPDATE SET fingerprint = excluded.fingerprint,
  state = excluded.state, code = excluded.code, response = excluded.response,
  resource_id = excluded.resource_id, created_at = excluded.created_at,
  expires_at = excluded.expires_at;
{append}COMMIT;
"""

APPENDS = {
    "log": """INSERT INTO leads_events (xid, position, occurred_at, type, actor, lead_id,
  subject_id, payload, org) SELECT pg_current_xact_id()::text::bigint,
  nextval('leads_events_position'), now(), 'lead.created', 'bench', :k::text, NULL,
  '\\x0a24', 'default';
""",
    "no log": "",
    "head row": """WITH head AS (UPDATE leads_event_log SET head = head + 1 WHERE id = 1
  RETURNING head), notified AS (SELECT pg_notify('leads_events', ''))
  INSERT INTO leads_events (position, occurred_at, type, actor, lead_id, subject_id, payload,
  org) SELECT head.head, now(), 'lead.created', 'bench', :k::text, NULL, '\\x0a24', 'default'
  FROM head, notified;
""",
}


def pgbench() -> str | None:
    for path in PGBENCH_PATHS:
        found = shutil.which(path)
        if found:
            return found
    return None


def migrate(url: str) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CRM_")}
    env.update({"CRM_DATABASE_URL": url, "CRM_API_TOKENS": "bench:" + "x" * 32,
                "CRM_LOG_LEVEL": "WARNING"})
    subprocess.run([sys.executable, "-m", "services.leads", "migrate"], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=120)


def tps(output: str) -> float:
    found = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", output)
    if found is None:
        raise RuntimeError(f"pgbench said no tps:\n{output[-2000:]}")
    return float(found.group(1))


def measure(*, clients: int, duration: float, rounds: int) -> dict[str, Any]:
    binary = pgbench()
    if binary is None:
        raise RuntimeError("pgbench not found")
    names = {script: f"crm_append_{script.replace(' ', '_')}_{uuid.uuid4().hex[:8]}"
             for script in APPENDS}
    urls = create_databases(list(names.values()))
    base, _, _ = ADMIN_URL.rpartition("/")
    results: dict[str, list[float]] = {script: [] for script in APPENDS}
    try:
        for url in urls.values():
            migrate(url)
        with tempfile.TemporaryDirectory(prefix="crm-append-") as tmp:
            for _ in range(rounds):
                for script, append in APPENDS.items():
                    path = Path(tmp) / f"{names[script]}.sql"
                    path.write_text(TRANSACTION.replace("{append}", append))
                    done = subprocess.run(
                        [binary, "-n", "-M", "prepared", "-c", str(clients),
                         "-j", str(min(clients, 2)), "-T", str(max(1, round(duration))),
                         "-f", str(path), f"{base}/{names[script]}"],
                        capture_output=True, text=True, timeout=duration * 4 + 60, check=False)
                    if done.returncode != 0:
                        raise RuntimeError(f"pgbench failed:\n{done.stderr[-2000:]}")
                    results[script].append(tps(done.stdout))
    finally:
        drop_databases(list(names.values()))
    best = {script: max(found) for script, found in results.items()}
    return {"clients": clients, "duration": duration, "tps": results, "best": best,
            "log_vs_no_log": round(best["log"] / best["no log"], 2),
            "head_row_vs_no_log": round(best["head row"] / best["no log"], 2)}


def table(row: dict[str, Any]) -> str:
    lines = [f"append path under pgbench, c={row['clients']} (best of rounds, tps)"]
    for script, best in row["best"].items():
        rounds = ", ".join(f"{t:.0f}" for t in row["tps"][script])
        lines.append(f"  {script:<9} {best:8.0f}   rounds: {rounds}")
    lines.append(f"  log / no log: {row['log_vs_no_log']:.2f}x   "
                 f"head row / no log: {row['head_row_vs_no_log']:.2f}x")
    return "\n".join(lines)


def main() -> None:
    stand_alone(__doc__, measure, table, clients=(int, 32), duration=(float, 5.0),
                rounds=(int, 2))


if __name__ == "__main__":
    main()
