"""The gRPC entrypoint of the bookings service: proto in → command → result → proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TypeAlias

import grpc
from crm.bookings.v1 import bookings_pb2 as pb
from crm.bookings.v1 import bookings_pb2_grpc

from services.bookings import messages, service
from services.bookings.adapters import SqlBookingsUnitOfWork
from services.shared import subscribe
from services.shared.db import utcnow
from services.shared.entrypoint import Entrypoint, caller, idempotent, key
from services.shared.events import Filter
from services.shared.paging import PageRequest
from services.shared.uow import Units

Context: TypeAlias = grpc.aio.ServicerContext


class BookingsApi(Entrypoint[SqlBookingsUnitOfWork], bookings_pb2_grpc.BookingsServiceServicer):
    def __init__(self, units: Units[SqlBookingsUnitOfWork], leads: service.Leads, *,
                 heartbeat_seconds: float, past_grace: timedelta = timedelta(0)) -> None:
        super().__init__(units)
        self.leads = leads
        self.heartbeat_seconds = heartbeat_seconds
        self.past_grace = past_grace

    @idempotent
    async def CreateAppointment(self, request: pb.CreateAppointmentRequest, context: Context
                                ) -> pb.Appointment:
        command = service.CreateAppointment(
            lead_id=request.lead_id,
            agent_id=request.agent_id,
            start_time=messages.instant(request, "start_time"),
            end_time=messages.instant(request, "end_time"),
            notes=request.notes,
            caller=caller(), key=key(request),
            not_before=utcnow() - self.past_grace,
        )
        # Two transactions and a call to the leads service: not one unit of work.
        booked = await service.create_appointment(
            command, self.units.answering(messages.appointment), self.leads,
            time_remaining=context.time_remaining)
        return await self.answer_result(context, booked, messages.appointment)

    async def GetAppointment(self, request: pb.GetAppointmentRequest, context: Context
                             ) -> pb.Appointment:
        query = service.GetAppointment(appointment_id=request.appointment_id, caller=caller())
        return await self.run_query(context, service.get_appointment, query,
                                    messages.appointment)

    async def ListAppointments(self, request: pb.ListAppointmentsRequest, context: Context
                               ) -> pb.ListAppointmentsResponse:
        query = service.ListAppointments(
            where=service.Filter(
                lead_id=request.lead_id or None,
                agent_id=request.agent_id or None,
                status=messages.status_from(request.status) if request.status else None,
                window_start=messages.instant(request, "window_start"),
                window_end=messages.instant(request, "window_end"),
            ),
            page=PageRequest(request.page_size, request.page_token), caller=caller(),
        )
        return await self.run_query(context, service.list_appointments, query,
                                    messages.appointments_page)

    @idempotent
    async def ConfirmAppointment(self, request: pb.ConfirmAppointmentRequest, context: Context
                                 ) -> pb.Appointment:
        command = service.ChangeStatus(appointment_id=request.appointment_id, caller=caller(),
                                       key=key(request))
        return await self.run_command(context, service.confirm, command, messages.appointment)

    @idempotent
    async def CancelAppointment(self, request: pb.CancelAppointmentRequest, context: Context
                                ) -> pb.Appointment:
        command = service.ChangeStatus(appointment_id=request.appointment_id, caller=caller(),
                                       key=key(request), reason=request.reason)
        return await self.run_command(context, service.cancel, command, messages.appointment)

    @idempotent
    async def CompleteAppointment(self, request: pb.CompleteAppointmentRequest, context: Context
                                  ) -> pb.Appointment:
        command = service.ChangeStatus(appointment_id=request.appointment_id, caller=caller(),
                                       key=key(request))
        return await self.run_command(context, service.complete, command, messages.appointment)

    async def ListAppointmentChanges(
        self, request: pb.ListAppointmentChangesRequest, context: Context,
    ) -> pb.ListAppointmentChangesResponse:
        query = service.ListChanges(
            appointment_id=request.appointment_id,
            page=PageRequest(request.page_size, request.page_token), caller=caller(),
        )
        return await self.run_query(context, service.list_changes, query, messages.changes_page)

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
        async for event in subscribe.stream(self.units.storage, context, pb.Event,
                                            request.after_cursor, where,
                                            heartbeat=self.heartbeat_seconds):
            yield event

