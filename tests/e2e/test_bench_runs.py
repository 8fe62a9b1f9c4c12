"""`make bench` keeps working: a tiny run of it, as a user starts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.databases import admin_url
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


def test_a_quick_bench_run_measures_the_round_trip_floor_on_postgresql(
        tmp_path: Path, postgres_url: str) -> None:
    """The floor (one `SELECT 1` a call, beside the lean reference) gets its row,
    with its ratio to the echo baseline, on the PostgreSQL the tests use."""
    finished = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--quick", "--only", "RoundTrip",
         "--backends", "postgresql", "--duration", "0.5", "--output-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "CRM_TEST_POSTGRES_URL": admin_url(postgres_url)},
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    [written] = tmp_path.glob("*.json")
    rows = {(row["scenario"], row["concurrency"]): row
            for row in json.loads(written.read_text())["calls"]}
    for concurrency in (1, 32):
        row = rows[("RoundTrip", concurrency)]
        assert (row["path"], row["error_count"]) == ("grpc", 0)
        assert row["rps"] > 0 and row["x_echo"]["rps"] > 0
        assert row["server_cpu"]["lean"] > 0  # served by the lean reference's process
