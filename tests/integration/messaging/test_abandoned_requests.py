"""A request to Twilio that is given up on never reaches Twilio later.

Its connection is reset, not closed: after an ordinary close the kernel would
keep retransmitting the unacknowledged request, and across a partition that
heals it could land after the message was looked up, not found and sent again.
(The network drill in tests/drills/test_network_twilio.py found exactly that.)
"""

from __future__ import annotations

import asyncio

import pytest

from services.messaging.providers import ProviderUnavailable, TwilioProvider
from tests.integration.messaging.conftest import FROM, SID, TOKEN


async def test_a_request_abandoned_on_timeout_resets_its_connection() -> None:
    endings: asyncio.Queue[str] = asyncio.Queue()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass
            await endings.put("closed")  # FIN: what the kernel sends after a close
        except ConnectionResetError:
            await endings.put("reset")  # RST: nothing unsent survives
        finally:
            writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = TwilioProvider(account_sid=SID, auth_token=TOKEN, from_number=FROM,
                              api_base_url=f"http://127.0.0.1:{port}", timeout=0.3)
    try:
        with pytest.raises(ProviderUnavailable) as failure:
            await provider.send(to="+14155550111", body="Never twice", status_callback=None)
        assert failure.value.maybe_sent
        assert await asyncio.wait_for(endings.get(), 10) == "reset"
    finally:
        await provider.close()
        server.close()
        await server.wait_closed()
