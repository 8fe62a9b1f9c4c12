"""ConfirmAppointment from a kept appointment (services.shared.uow, "Kept rows")."""

from __future__ import annotations

import grpc
import pytest

from tests.integration.bookings.conftest import Stub, book, confirm
from tests.integration.test_kept_rows import misreads
from tests.support.rpc import refusal

pytestmark = pytest.mark.postgres_only  # SQLite keeps no rows: one writer, reads are calls


async def test_a_confirm_from_a_kept_appointment_over_a_taken_slot_is_slot_taken(
    bookings: Stub, lead_id: str, agent: str, round_trips: list[int],
) -> None:
    """Confirming from a kept copy reads not the agent's other appointments: the
    exclusion constraint refuses the overlap, and the call, reading them, names it."""
    held = await book(bookings, lead_id, agent, start=1, hours=2)
    clashing = await book(bookings, lead_id, agent, start=2, hours=2)
    await confirm(bookings, held.appointment_id)
    before = misreads("bookings")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await confirm(bookings, clashing.appointment_id)
    refused = refusal(failed.value)
    assert (refused.reason, refused.metadata["conflicting_appointment_id"]) == (
        "SLOT_TAKEN", held.appointment_id)
    assert misreads("bookings") == before + 1  # it started from the kept copy
    free = await book(bookings, lead_id, agent, start=5, hours=1)
    round_trips.clear()
    confirmed = await confirm(bookings, free.appointment_id)
    assert len(round_trips) == 1, round_trips
    assert confirmed.version == 2
