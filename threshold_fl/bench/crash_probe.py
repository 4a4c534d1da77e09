"""How long a crashed client takes to be heard of: SIGKILL to its Last Will.

When a client process is killed, the kernel tears down its address space before it
closes the process's sockets (``do_exit`` frees memory, then files), and only the
closed socket tells the broker to publish the Last Will.  That delay belongs to the
operating system and the broker, not to the protocol, and it grows with what the
process has mapped: a process that imported torch (the CUDA build, about 0.5 GB
resident) takes tens of milliseconds, a bare Python a few.  ``threshold-fl bench
dropout`` measures it with :func:`crash_detection_s` so that the decryption step
with a dead member can be split into waiting for the news and the protocol's work.

The probe process imports what a client imports (torch, OpenFHE, the party code),
builds the benchmark's model, connects with a Last Will on a probe topic and waits;
the parent subscribes, kills it and times the Will.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import time

import aiomqtt

from threshold_fl.errors import ThresholdFLError
from transports.broker import BrokerConfig, private_broker

__all__ = ["crash_detection_s"]

_TOPIC = "tfl-probe/crash/victim"
_READY = b"ready"
_DEAD = b"dead"
_WAIT_S = 60.0  # the probe's start-up (imports, model) and the Will, each at most this

# The probe: the client's imports and model, then a connection with a Last Will.
_PROBE = """
import asyncio, sys
import aiomqtt, openfhe, torch
import threshold_fl.app.party, threshold_fl.ml.learner
from threshold_fl.ml.models import build_model
model = build_model(sys.argv[3])
async def main():
    will = aiomqtt.Will(sys.argv[4], b"dead", qos=1, retain=False)
    async with aiomqtt.Client(sys.argv[1], int(sys.argv[2]), identifier="crash-probe",
                              will=will):
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        await asyncio.sleep(3600)
asyncio.run(main())
"""


async def _one(broker: BrokerConfig, model: str) -> float:
    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PROBE, broker.host, str(broker.port), model, _TOPIC,
        stdout=asyncio.subprocess.PIPE)
    try:
        assert probe.stdout is not None
        line = await asyncio.wait_for(probe.stdout.readline(), _WAIT_S)
        if line.strip() != _READY:
            raise ThresholdFLError(f"the crash probe did not start (it said {line!r}); "
                                   "run it by hand to see its error")
        async with aiomqtt.Client(broker.host, broker.port,
                                  identifier="crash-watch") as watch:
            await watch.subscribe(_TOPIC, qos=1)
            killed = time.perf_counter()
            os.kill(probe.pid, signal.SIGKILL)
            try:
                await asyncio.wait_for(_will(watch), _WAIT_S)
            except asyncio.TimeoutError:
                raise ThresholdFLError(f"no Last Will within {_WAIT_S:.0f} s of killing the "
                                       "crash probe: is the broker publishing Wills?") from None
            return time.perf_counter() - killed
    finally:
        if probe.returncode is None:
            probe.kill()
        await probe.wait()


async def _will(watch: aiomqtt.Client) -> None:
    async for message in watch.messages:
        if message.payload == _DEAD:
            return
    raise ThresholdFLError("the broker closed before the probe's Last Will arrived")


async def _probe(model: str, repeats: int) -> list[float]:
    async with private_broker(backend="mosquitto") as url:
        broker = BrokerConfig.from_url(url)
        return [await _one(broker, model) for _ in range(repeats)]


def crash_detection_s(model: str, repeats: int = 5) -> float:
    """The median seconds from SIGKILL of a client-like process (torch, OpenFHE, the
    party code and *model* loaded) to its Last Will reaching a subscriber, over a
    private mosquitto on loopback."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    return statistics.median(asyncio.run(_probe(model, repeats)))
