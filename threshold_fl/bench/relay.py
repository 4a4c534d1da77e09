"""A delaying TCP relay: latency for a link where ``tc netem`` is not available.

``python -m threshold_fl.bench.relay --listen HOST:PORT --to HOST:PORT --delay-ms D``
accepts connections and forwards each to ``--to``, holding every piece of data D ms
in each direction before passing it on, in order.  Data keeps flowing while earlier
pieces wait (the delay is latency, not a bandwidth limit), so a round trip through it
gains 2 D.  :mod:`threshold_fl.bench.network` puts one in front of the broker, in the
broker's namespace, so every party's round trip to the broker gains 2 D.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence

from threshold_fl._checks import bounded
from threshold_fl.errors import ParameterError

__all__ = ["main", "relay"]

#: Bytes read at a time; with a delay each read is held and written as one piece.
_READ = 1 << 16


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay_s: float) -> None:
    """Copy *reader* to *writer*, each piece *delay_s* after it was read."""
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def release() -> None:
        while True:
            due, data = await held.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        with contextlib.suppress(OSError):
            writer.write_eof()

    releaser = asyncio.create_task(release())
    try:
        while data := await reader.read(_READ):
            held.put_nowait((time.monotonic() + delay_s, data))
        held.put_nowait((time.monotonic() + delay_s, b""))
        await releaser
    finally:
        releaser.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await releaser


async def _serve_one(target: tuple[str, int], delay_s: float, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(*target)
    except OSError:
        writer.close()
        return
    pumps = [asyncio.create_task(_pump(reader, upstream_writer, delay_s)),
             asyncio.create_task(_pump(upstream_reader, writer, delay_s))]
    try:
        done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        if any(task.exception() is not None for task in done):  # a reset: end both ways
            for task in pending:
                task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
    finally:
        for stream in (writer, upstream_writer):
            stream.close()


async def relay(listen: tuple[str, int], target: tuple[str, int], delay_s: float) -> None:
    """Serve until cancelled."""
    if not delay_s >= 0:
        raise ParameterError(f"the delay must be >= 0 s, got {delay_s}")
    server = await asyncio.start_server(
        lambda r, w: _serve_one(target, delay_s, r, w), *listen)
    print(f"relay: {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}, "
          f"{delay_s * 1e3:g} ms each way", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m threshold_fl.bench.relay",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--to", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--delay-ms", type=bounded(float, 0.0, 10_000.0), required=True,
                        help="held this long in each direction")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(relay(args.listen, args.to, args.delay_ms / 1e3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
