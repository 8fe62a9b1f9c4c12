"""A process that cannot start says why on stderr, naming the variable, never a secret."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.servers import ROOT

SECRET = "supersecret-0123456789abcdef"


@pytest.mark.parametrize(("module", "env", "says"), [
    ("services.leads", {"CRM_API_TOKENS": f"alice:{SECRET},bob:short1"},
     "CRM_API_TOKENS: entry 2 ('bob')"),
    ("services.bookings", {"CRM_API_TOKENS": f"alice:{SECRET}",
                           "CRM_DATABASE_URL": f"mysql://crm:{SECRET}@db/crm"},
     "CRM_DATABASE_URL: only postgresql://"),
    ("gateway", {"CRM_API_TOKENS": f"alice:{SECRET}", "CRM_SESSION_SECRET": SECRET},
     "CRM_SESSION_SECRET: expected at least 32 characters"),
])
def test_a_configuration_error_exits_naming_the_variable_and_not_the_value(
    module: str, env: dict[str, str], says: str,
) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--port", "0"], cwd=ROOT, check=False,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert says in done.stderr, done.stderr
    assert SECRET not in done.stderr + done.stdout and "short1" not in done.stderr
