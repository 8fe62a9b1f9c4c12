"""The contracts in protos/ and the code that implements them agree."""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from services.bookings.api import BookingsApi
from services.leads.api import LeadsApi
from services.messaging.api import MessagingApi
from services.shared.interceptor import Kind, kind_of
from tests.support.servers import ROOT

SERVICES = {"crm.leads.v1.LeadsService": LeadsApi,
            "crm.bookings.v1.BookingsService": BookingsApi,
            "crm.messaging.v1.MessagingService": MessagingApi}


def test_the_generated_code_is_not_stale() -> None:
    checked = subprocess.run([sys.executable, "protos/generate.py", "--check"], cwd=ROOT,
                             capture_output=True, text=True, check=False, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("service_name", sorted(SERVICES))
def test_every_mutating_rpc_runs_once_per_idempotency_key(service_name: str) -> None:
    service = descriptor_pool.Default().FindServiceByName(service_name)
    servicer = SERVICES[service_name]
    for method in service.methods:
        handler = getattr(servicer, method.name)
        mutating = kind_of(f"/{service_name}/{method.name}") is Kind.MUTATING
        assert getattr(handler, "__idempotent__", False) == mutating, method.name


def test_reads_are_declared_free_of_side_effects_in_the_contract() -> None:
    method = descriptor_pool.Default().FindMethodByName("crm.leads.v1.LeadsService.GetLead")
    assert method.GetOptions().idempotency_level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    assert kind_of("/crm.leads.v1.LeadsService/CreateLead") is Kind.MUTATING
    assert kind_of("/grpc.health.v1.Health/Check") is Kind.EXEMPT
