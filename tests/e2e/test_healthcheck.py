"""The health check the containers run, against a real server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.servers import ROOT, ServiceProcess, environment


def probe(target: str) -> int:
    return subprocess.run([sys.executable, "-m", "services.shared.healthcheck", target],
                          cwd=ROOT, capture_output=True, check=False, timeout=30).returncode


def test_the_probe_passes_a_serving_server_and_fails_a_stopped_one(
    database_url: str, tmp_path: Path
) -> None:
    process = ServiceProcess("leads", environment(database_url, tmp_path)).start()
    try:
        assert probe(process.target) == 0
    finally:
        process.terminate()
    assert probe(process.target) == 1
