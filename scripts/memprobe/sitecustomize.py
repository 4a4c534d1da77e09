"""Diagnostics: where a ``bench scale`` aggregator's memory is, sampled every 0.25 s.

Not part of the library.  Put this folder on ``PYTHONPATH`` and name an output file::

    TFL_MEMPROBE=/tmp/agg.jsonl OMP_NUM_THREADS=1 \\
    PYTHONPATH=.:scripts/memprobe .venv/bin/python -m threshold_fl.app.cli \\
        bench scale --clients 50 --per-process 20 --out /tmp/probe

Python imports ``sitecustomize`` at start-up in every process of the run; only where
``TFL_MEMPROBE`` is set and the process imports :mod:`threshold_fl.bench.scale_party`
does it patch anything: the aggregator's (party ``server``) :class:`MqttTransport` and
:class:`Node` are found, and one JSON line per sample goes to the file: resident and
peak memory from ``/proc/self/status``, and the length and payload MiB of each queue
(transport inbox, held messages, send window, reassembly, aiomqtt's frame queue, node
inbox).  It reads private attributes, so it follows the code it was written for
(2026-12-05) and may need updating.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

_OUT = os.environ.get("TFL_MEMPROBE")
MIB = 1 << 20


def _status() -> dict[str, int]:
    found = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(("VmRSS", "VmHWM")):
                found[line.split(":")[0]] = int(line.split()[1]) // 1024
    return found


def _size(item: object) -> int:
    data = getattr(item, "data", item)
    return len(data) if isinstance(data, bytes | bytearray | memoryview) else 0


def _sample(link: Any, nodes: Sequence[Any]) -> dict[str, Any]:
    held, window = link._held, link._window
    plans = {id(f.transfer.transfer.plan): f.transfer.transfer.plan.total
             for f in window._in_flight.values()}
    plans.update((id(out.transfer.plan), out.transfer.plan.total) for out in window._queue)
    sample: dict[str, Any] = {
        "t": round(time.time(), 2), **_status(),
        "inbox": link._inbox.qsize(), "inbox_mb": sum(map(_size, link._inbox._queue)) // MIB,
        "held": len(held), "held_mb": held.in_memory // MIB, "spilled": held.spilled,
        "inflight": len(window._in_flight), "wqueue": len(window._queue),
        "plans": len(plans), "plans_mb": sum(plans.values()) // MIB,
        "reasm_open": len(link._reassembler._open),
        "reasm_mb": link._reassembler.buffered_bytes // MIB,
    }
    client = link._client
    if client is not None:
        frames = client._queue._queue
        sample.update(aq=len(frames), aq_mb=sum(len(m.payload) for m in frames) // MIB)
    for node in nodes:
        sample.update(node_inbox=node._inbox.qsize(),
                      node_inbox_mb=sum(map(_size, node._inbox._queue)) // MIB,
                      state=str(node.machine.state))
    return sample


async def _sampler(link: Any, nodes: Sequence[Any], path: str) -> None:
    with open(path, "a", encoding="utf-8") as out:
        while True:
            try:
                line = json.dumps(_sample(link, nodes))
            except Exception as error:  # a renamed attribute: say so, keep the run going
                line = json.dumps({"error": repr(error)})
            out.write(line + "\n")
            out.flush()
            await asyncio.sleep(0.25)


def _patch(path: str) -> None:
    import threshold_fl.node as node_module
    import transports.mqtt as mqtt_module

    nodes: list[Any] = []
    transport_init = mqtt_module.MqttTransport.__init__
    node_init = node_module.Node.__init__

    def patched_transport(self: Any, party_id: str, *args: Any, **kwargs: Any) -> None:
        transport_init(self, party_id, *args, **kwargs)
        if party_id == "server":
            asyncio.get_running_loop().create_task(_sampler(self, nodes, path))

    def patched_node(self: Any, machine: Any, *args: Any, **kwargs: Any) -> None:
        node_init(self, machine, *args, **kwargs)
        if str(machine.me) == "server":
            nodes.append(self)

    mqtt_module.MqttTransport.__init__ = patched_transport  # type: ignore[method-assign]
    node_module.Node.__init__ = patched_node  # type: ignore[method-assign]


class _OnScaleParty(importlib.abc.MetaPathFinder):
    """Patches once, when the party module is first imported."""

    def __init__(self, path: str) -> None:
        self.path, self.done = path, False

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == "threshold_fl.bench.scale_party" and not self.done:
            self.done = True
            _patch(self.path)


if _OUT:
    sys.meta_path.insert(0, _OnScaleParty(_OUT))
