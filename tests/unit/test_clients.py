"""The service config of the services' channels: which calls get a default deadline."""

from __future__ import annotations

import json

import pytest

from services.shared.clients import DEFAULT_TIMEOUT, SERVICE_CONFIG, SERVICES


def method_config(service: str, method: str) -> dict[str, object]:
    """The methodConfig gRPC applies to service/method: an exact name before a
    service-wide one before the default (`{}`)."""
    configs = json.loads(SERVICE_CONFIG)["methodConfig"]
    for wanted in ({"service": service, "method": method}, {"service": service}, {}):
        for config in configs:
            if wanted in config["name"]:
                return dict(config)
    raise AssertionError(f"no methodConfig applies to {service}/{method}")


@pytest.mark.parametrize(("service", "method"), [
    *((s, "Subscribe") for s in SERVICES), ("grpc.health.v1.Health", "Watch"),
])
def test_long_streams_get_no_default_deadline(service: str, method: str) -> None:
    config = method_config(service, method)
    assert "timeout" not in config
    assert config["retryPolicy"]


@pytest.mark.parametrize(("service", "method"), [
    ("crm.leads.v1.LeadsService", "CreateLead"), ("grpc.health.v1.Health", "Check"),
])
def test_unary_calls_get_the_default_deadline(service: str, method: str) -> None:
    assert method_config(service, method)["timeout"] == DEFAULT_TIMEOUT
