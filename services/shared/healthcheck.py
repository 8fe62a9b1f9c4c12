"""Ask a server's standard gRPC health service whether it is serving.

    python -m services.shared.healthcheck 127.0.0.1:50051 [service-name]

Exits 0 when SERVING, 1 otherwise (not serving, draining, or no answer in
3 s): what a container health check or a load balancer's probe needs. The
overall status ("") is NOT_SERVING while the service cannot reach its
database; ask for `liveness` to learn only whether the process answers.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0


def serving(target: str, service: str = "", timeout: float = TIMEOUT_SECONDS) -> bool:
    with grpc.insecure_channel(target) as channel:
        return check(channel, service, timeout)


def check(channel: grpc.Channel, service: str = "", timeout: float = TIMEOUT_SECONDS) -> bool:
    """True only for an answer of SERVING; any other status or error is False."""
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    except grpc.RpcError:
        return False
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    return 0 if serving(argv[0], argv[1] if len(argv) > 1 else "") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
