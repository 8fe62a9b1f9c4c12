"""`make bench` keeps working: a tiny run of it, as a user starts it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.servers import ROOT


def test_a_quick_bench_run_measures_get_lead_against_the_echo_baseline(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--quick", "--only", "GetLead",
         "--backends", "sqlite", "--duration", "0.5", "--output-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    [written] = tmp_path.glob("*.json")
    assert str(written) in finished.stdout
    document = json.loads(written.read_text())
    assert document["machine"]["nproc"] >= 1
    rows = {(row["scenario"], row["path"], row["concurrency"]): row
            for row in document["calls"]}
    for path in ("grpc", "http"):
        for concurrency in (1, 32):
            row = rows[("GetLead", path, concurrency)]
            assert row["rps"] > 0
            assert row["error_count"] == 0
            assert row["x_echo"]["rps"] > 0
            assert row["client_cpu"] > 0
    assert rows[("GetLead", "http", 1)]["x_grpc"]["rps"] > 0
    assert rows[("Echo", "grpc", 32)]["rps"] > 0
