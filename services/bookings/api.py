"""The gRPC entrypoint of the bookings service: proto in → command → result → proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
from crm.bookings.v1 import bookings_pb2 as pb
from crm.bookings.v1 import bookings_pb2_grpc

from services.bookings import messages, service
from services.bookings.adapters import SqlBookingsUnitOfWork
from services.bookings.domain import MAX_AGENT_ID_LENGTH
from services.shared import paging, subscribe, validation
from services.shared.context import current_call
from services.shared.events import Filter
from services.shared.idempotency import idempotent, reads
from services.shared.runtime import ServiceRuntime

Context: TypeAlias = grpc.aio.ServicerContext

# Of the caller's remaining time, what the call to the leads service leaves
# over (at most this much), so that its failure still reaches the caller in time.
ANSWER_MARGIN = 0.1


class BookingsApi(bookings_pb2_grpc.BookingsServiceServicer):
    def __init__(self, runtime: ServiceRuntime, leads: service.Leads) -> None:
        self.runtime = runtime
        self.leads = leads

    async def _check_booking(
        self, request: pb.CreateAppointmentRequest, context: Context
    ) -> service.CreateAppointment:
        command = service.CreateAppointment(
            lead_id=request.lead_id,
            agent_id=request.agent_id,
            start_time=messages.instant(request, "start_time"),
            end_time=messages.instant(request, "end_time"),
            notes=request.notes,
            actor=current_call().principal,
        )
        return await service.check_booking(command, self.leads,
                                           time_remaining=_time_for_leads(context))

    @idempotent(prepare=_check_booking)
    async def CreateAppointment(
        self, request: pb.CreateAppointmentRequest, context: Context,
        uow: SqlBookingsUnitOfWork, command: service.CreateAppointment,
    ) -> pb.Appointment:
        return messages.appointment(await service.create_appointment(command, uow))

    @reads
    async def GetAppointment(
        self, request: pb.GetAppointmentRequest, context: Context, uow: SqlBookingsUnitOfWork
    ) -> pb.Appointment:
        return messages.appointment(await service.get_appointment(request.appointment_id, uow))

    @reads
    async def ListAppointments(
        self, request: pb.ListAppointmentsRequest, context: Context, uow: SqlBookingsUnitOfWork
    ) -> pb.ListAppointmentsResponse:
        wanted = messages.status_from(request.status) if request.status else None
        window_start = messages.instant(request, "window_start")
        window_end = messages.instant(request, "window_end")
        service.check_window(window_start, window_end)
        size = paging.page_size(request.page_size)
        query = {
            "list": "appointments", "lead_id": request.lead_id, "agent_id": request.agent_id,
            "status": request.status, "window_start": window_start, "window_end": window_end,
        }
        after = paging.decode_time_and_id(request.page_token, query)
        found = await uow.appointments.find(
            lead_id=service.check_filter(request.lead_id, "lead_id", validation.MAX_ID_LENGTH),
            agent_id=service.check_filter(request.agent_id, "agent_id", MAX_AGENT_ID_LENGTH),
            status=wanted,
            window_start=window_start, window_end=window_end,
            after=list(after) if after else None, limit=size + 1,
        )
        page = found[:size]
        token = ""
        if len(found) > size:
            last = page[-1]
            token = paging.encode_time_and_id(last.start_time, last.appointment_id, query)
        return pb.ListAppointmentsResponse(
            appointments=[messages.appointment(x) for x in page], next_page_token=token
        )

    @idempotent
    async def ConfirmAppointment(
        self, request: pb.ConfirmAppointmentRequest, context: Context, uow: SqlBookingsUnitOfWork
    ) -> pb.Appointment:
        return messages.appointment(await service.confirm(_change(request.appointment_id), uow))

    @idempotent
    async def CancelAppointment(
        self, request: pb.CancelAppointmentRequest, context: Context, uow: SqlBookingsUnitOfWork
    ) -> pb.Appointment:
        command = _change(request.appointment_id, reason=request.reason)
        return messages.appointment(await service.cancel(command, uow))

    @idempotent
    async def CompleteAppointment(
        self, request: pb.CompleteAppointmentRequest, context: Context,
        uow: SqlBookingsUnitOfWork,
    ) -> pb.Appointment:
        return messages.appointment(await service.complete(_change(request.appointment_id), uow))

    @reads
    async def ListAppointmentChanges(
        self, request: pb.ListAppointmentChangesRequest, context: Context,
        uow: SqlBookingsUnitOfWork,
    ) -> pb.ListAppointmentChangesResponse:
        appointment_id = service.check_id(request.appointment_id)
        size = paging.page_size(request.page_size)
        query = {"list": "appointment_changes", "appointment_id": appointment_id}
        after = paging.decode(request.page_token, query)
        found = await uow.appointments.list_changes(
            appointment_id, int(after[0]) if after else None, size + 1
        )
        if not found and not await uow.appointments.exists(appointment_id):
            await service.get_appointment(appointment_id, uow)  # raises APPOINTMENT_NOT_FOUND
        page = found[:size]
        token = paging.encode([page[-1][0]], query) if len(found) > size else ""
        return pb.ListAppointmentChangesResponse(
            changes=[messages.change(change) for _, change in page], next_page_token=token
        )

    # Events go out as bytes made once for every subscriber (see shared.subscribe).
    async def Subscribe(  # type: ignore[override]
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.Event | bytes]:
        where = Filter.of(
            lead_ids=request.lead_ids,
            subject_ids=request.appointment_ids,
            subject_field="appointment_ids",
            types=request.types,
            known_types=messages.EVENT_TYPES,
        )
        async for event in subscribe.stream(
            self.runtime, context, pb.Event, request.after_cursor, where
        ):
            yield event


def _change(appointment_id: str, reason: str = "") -> service.ChangeStatus:
    call = current_call()
    return service.ChangeStatus(
        appointment_id=appointment_id, actor=call.principal,
        idempotency_key=call.idempotency_key, reason=reason,
    )


def _time_for_leads(context: Context) -> float | None:
    """The caller's remaining time, less a margin to answer in; None: the channel's default."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return None
    return max(0.0, remaining - min(ANSWER_MARGIN, remaining / 10))

