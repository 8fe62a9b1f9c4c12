"""The container probe's verdicts, with grpcio-testing playing the server: each
answer and failure a health service can give, including the ones a real server
gives only for an instant (NOT_SERVING while it drains)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import grpc_testing
import pytest
from grpc_health.v1 import health_pb2

from services.shared.healthcheck import check

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
CHECK = HEALTH.methods_by_name["Check"]
Status = health_pb2.HealthCheckResponse


def probe_against(
    service: str, answer: Status | None, code: grpc.StatusCode = grpc.StatusCode.OK
) -> tuple[bool, health_pb2.HealthCheckRequest]:
    """Run the probe while the test answers its one call with `answer` and `code`."""
    channel = grpc_testing.channel([HEALTH], grpc_testing.strict_real_time())
    with ThreadPoolExecutor(1) as pool:
        verdict = pool.submit(check, channel, service)
        _metadata, request, rpc = channel.take_unary_unary(CHECK)
        rpc.terminate(answer or Status(), (), code, "" if code is grpc.StatusCode.OK else "down")
        return verdict.result(timeout=10), request


def test_serving_passes_and_the_service_name_is_asked_for() -> None:
    verdict, request = probe_against("crm.leads.v1.LeadsService", Status(status=Status.SERVING))
    assert verdict is True
    assert request.service == "crm.leads.v1.LeadsService"


@pytest.mark.parametrize("status", [Status.NOT_SERVING, Status.UNKNOWN, Status.SERVICE_UNKNOWN])
def test_every_other_status_fails(status: int) -> None:
    verdict, _ = probe_against("", Status(status=status))  # type: ignore[arg-type]
    assert verdict is False


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED])
def test_an_error_fails(code: grpc.StatusCode) -> None:
    verdict, _ = probe_against("", None, code)
    assert verdict is False

