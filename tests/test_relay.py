"""The delaying TCP relay: bytes arrive intact and in order, and no earlier than the
delay allows (a lower bound: a busy machine only makes it later)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import pytest

from threshold_fl.bench.relay import relay
from threshold_fl.errors import ParameterError
from transports.broker import free_port


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _connect(port: int, serving: asyncio.Task[None]
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the relay once it listens; a clear failure if it never does."""
    for _ in range(250):
        if serving.done():  # it stopped: its own error says why
            serving.result()
            pytest.fail("the relay returned before anyone connected")
        with contextlib.suppress(OSError):
            return await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.02)
    pytest.fail(f"the relay never listened on 127.0.0.1:{port} (250 tries, 20 ms apart)")


async def test_the_relay_delays_each_way_and_keeps_the_bytes() -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target = echo.sockets[0].getsockname()[:2]
    port = free_port()
    task = asyncio.create_task(relay(("127.0.0.1", port), target, 0.15))
    try:
        reader, writer = await _connect(port, task)
        payload = os.urandom(3 << 20)  # many reads' worth: order must hold
        started = time.monotonic()
        writer.write(payload)
        await writer.drain()
        first = await reader.readexactly(1)
        assert time.monotonic() - started >= 0.3  # 0.15 s there and 0.15 s back
        rest = await reader.readexactly(len(payload) - 1)
        assert first + rest == payload
        writer.close()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        echo.close()


async def test_a_negative_delay_is_refused() -> None:
    with pytest.raises(ParameterError, match="delay must be >= 0"):
        await relay(("127.0.0.1", free_port()), ("127.0.0.1", 1), -1.0)
