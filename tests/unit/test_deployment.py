"""docker-compose.yml and the Dockerfile name only things that exist.

No Docker engine runs here, so the files are checked against the code: every
command runs a real module on its default port, every variable is one the code
reads, every health check asks the right server, every replica can scale.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.shared.config import DEFAULT_PORTS
from tests.support.servers import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
APPS = {"leads": "services.leads", "bookings": "services.bookings",
        "messaging": "services.messaging", "gateway": "gateway"}
SOURCES = "\n".join(p.read_text() for p in (ROOT / "gateway").rglob("*.py"))


def service(name: str) -> dict[str, Any]:
    found = COMPOSE["services"][name]
    assert isinstance(found, dict)
    return found


def test_compose_runs_postgres_and_every_server() -> None:
    assert set(COMPOSE["services"]) == {"postgres", *APPS}
    assert service("postgres")["image"].startswith("postgres:15")


@pytest.mark.parametrize("name", sorted(APPS))
def test_each_server_runs_its_module_on_its_default_port(name: str) -> None:
    command = service(name)["command"]
    assert command[:3] == ["python", "-m", APPS[name]]
    assert (ROOT / APPS[name].replace(".", "/") / "__main__.py").is_file()
    assert command[3:5] == ["--port", str(DEFAULT_PORTS[name])]
    # The services may serve from several processes (the gateway does not).
    assert command[5:] in ([], ["--workers", f"${{{name.upper()}_WORKERS:-1}}"])
    assert name != "gateway" or command[5:] == []


@pytest.mark.parametrize("name", sorted(APPS))
def test_each_health_check_asks_that_server(name: str) -> None:
    probe = " ".join(service(name)["healthcheck"]["test"])
    port = DEFAULT_PORTS[name]
    if name == "gateway":
        assert f"127.0.0.1:{port}/healthz" in probe
        assert '"/healthz"' in SOURCES
    else:
        assert f"services.shared.healthcheck 127.0.0.1:{port}" in probe
    assert service(name)["depends_on"]["postgres"]["condition"] == "service_healthy"


class Recording(dict[str, str]):
    """An environment that remembers which variables were read."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)


def resolved(environment: dict[str, Any]) -> dict[str, str]:
    """Compose's ${VAR:-default} as its default, ${VAR:?error} as a usable value."""
    tokens = ",".join(f"{p}:{p}-token-0123456789abcdef" for p in ("you", *APPS))
    values = {}
    for name, raw in environment.items():
        text = str(raw)
        text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
        values[name] = tokens if text.startswith("${") and ":?" in text else text
    return values


@pytest.mark.parametrize("name", sorted(APPS))
def test_every_variable_given_to_a_server_is_read_by_its_code_and_parses(name: str) -> None:
    from gateway.config import Settings as GatewaySettings
    from services.messaging.settings import SmsSettings
    from services.shared.config import Settings

    environ = Recording(resolved(service(name)["environment"]))
    if name == "gateway":
        GatewaySettings.from_env(environ)
    else:
        Settings.from_env(name, environ)
        if name == "messaging":
            SmsSettings.from_env(environ)
    assert set(environ) <= environ.read, set(environ) - environ.read


def test_services_reach_every_replica_of_each_other_through_dns_targets() -> None:
    environment = service("leads")["environment"]
    for name in ("leads", "bookings", "messaging"):
        assert environment[f"CRM_{name.upper()}_TARGET"] == f"dns:///{name}:{DEFAULT_PORTS[name]}"
    assert environment["CRM_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in environment["CRM_DATABASE_URL"]


@pytest.mark.parametrize("name", ["leads", "bookings", "messaging"])
def test_services_can_scale_out_no_fixed_names_or_host_ports(name: str) -> None:
    assert "container_name" not in service(name)
    assert "ports" not in service(name)


def test_only_the_gateway_is_published() -> None:
    assert service("gateway")["ports"] == [f"{DEFAULT_PORTS['gateway']}:{DEFAULT_PORTS['gateway']}"]


def test_the_dockerfile_copies_what_exists_and_exposes_every_port() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (ROOT / source).exists(), source
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", dockerfile, flags=re.M)[1].split()}  # type: ignore[index]
    assert set(DEFAULT_PORTS.values()) <= exposed
    assert "CRM_BIND_HOST=0.0.0.0" in dockerfile


def test_the_installed_package_carries_migrations_and_the_console(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                    str(tmp_path), str(ROOT)], check=True, timeout=180, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for app in ("leads", "bookings", "messaging"):
        assert f"services/{app}/migrations/env.py" in names
        assert f"services/{app}/migrations/versions/0001_initial.py" in names
    assert "crm/leads/v1/leads_pb2.py" in names
    assert "gateway/static/segments.js" in names
