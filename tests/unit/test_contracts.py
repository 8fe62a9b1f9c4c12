"""The contracts in protos/ and the code that implements them agree."""

from __future__ import annotations

import re
import subprocess
import sys
from enum import StrEnum

import pytest
from crm.bookings.v1 import bookings_pb2
from crm.leads.v1 import leads_pb2
from crm.messaging.v1 import messaging_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

from gateway import openapi, transcoding
from gateway.legacy import REQUESTS, STATUSES
from services.bookings.api import BookingsApi
from services.bookings.domain import AppointmentStatus
from services.leads.api import LeadsApi
from services.leads.domain import LeadStatus
from services.messaging.api import MessagingApi
from services.messaging.breaker import BreakerState
from services.messaging.domain import Direction, MessageStatus
from services.messaging.segments import Encoding
from services.shared.interceptor import Kind, kind_of
from services.shared.protos import enum_numbers
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


# -- one source for each fact: the contract's enums ------------------------------------


def test_every_domain_enum_is_the_contracts_and_a_stray_member_stops_the_service() -> None:
    for domain, contract in ((LeadStatus, leads_pb2.LeadStatus),
                             (AppointmentStatus, bookings_pb2.AppointmentStatus),
                             (MessageStatus, messaging_pb2.MessageStatus),
                             (Direction, messaging_pb2.Direction),
                             (Encoding, messaging_pb2.Encoding),
                             (BreakerState, messaging_pb2.BreakerState)):
        numbers = enum_numbers(domain, contract.DESCRIPTOR)  # type: ignore[type-var]
        assert [contract.Name(numbers[m]) for m in domain] == [
            f"{contract.DESCRIPTOR.values_by_number[0].name.removesuffix('UNSPECIFIED')}{m.name}"
            for m in domain]

    class Promoted(StrEnum):
        NEW = "new"
        PROMOTED = "promoted"

    with pytest.raises(TypeError, match="PROMOTED"):
        enum_numbers(Promoted, leads_pb2.LeadStatus.DESCRIPTOR)


def test_the_original_apis_statuses_and_its_schema_are_the_contracts_lowercase() -> None:
    contract = [v.name.removeprefix("LEAD_STATUS_").lower()
                for v in leads_pb2.LeadStatus.DESCRIPTOR.values if v.number]
    assert list(STATUSES) == contract
    document = openapi.document(transcoding.bindings(), "http://127.0.0.1:8080")
    body = document["paths"]["/api/leads/update-status"]["post"]["requestBody"]
    published = body["content"]["application/json"]["schema"]
    assert published == REQUESTS["update_status"]
    assert [o["properties"]["status"]["examples"] for o in published["oneOf"]] == [contract] * 2
    # Any case is read, and the published pattern says so.
    pattern = re.compile(published["oneOf"][0]["properties"]["status"]["pattern"])
    assert all(pattern.fullmatch(s) and pattern.fullmatch(s.upper()) for s in contract)
    assert not pattern.fullmatch("closed") and not pattern.fullmatch("lost ")
