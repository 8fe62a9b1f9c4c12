"""A client of the Closed Loop services: the stubs are `crm.*`, the channel is here.

    from closed_loop_client import idempotency, new_key, open_channel
    from crm.leads.v1 import leads_pb2, leads_pb2_grpc

    async with open_channel("leads.internal:50051", token=TOKEN) as channel:
        leads = leads_pb2_grpc.LeadsServiceStub(channel)
        lead = await leads.CreateLead(
            leads_pb2.CreateLeadRequest(name="Ada", phone="+14155550123"),
            metadata=idempotency(new_key()))

open_channel attaches the bearer token to every call, gives each a deadline
(10 s; none on Subscribe), balances round-robin over a `dns:///` target's
addresses and retries UNAVAILABLE with backoff (RETRY_POLICY); gRPC's retries
resend the same metadata, so one idempotency key (new_key, once per logical
call) covers every attempt. open_sync_channel is the same for blocking code.
"""

from closed_loop_client.channel import (
    CHANNEL_OPTIONS,
    DEFAULT_TIMEOUT,
    RETRY_POLICY,
    SERVICE_CONFIG,
    idempotency,
    new_key,
    open_channel,
    open_sync_channel,
)

__all__ = ["CHANNEL_OPTIONS", "DEFAULT_TIMEOUT", "RETRY_POLICY", "SERVICE_CONFIG",
           "idempotency", "new_key", "open_channel", "open_sync_channel"]
