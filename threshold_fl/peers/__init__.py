"""Peer systems measured side by side with threshold-fl (benchmark baselines).

Each peer lives in its own module and imports its third-party library lazily, so
importing :mod:`threshold_fl.peers` never needs a benchmark-only dependency:

* :mod:`threshold_fl.peers.tenseal_flare`: NVIDIA FLARE's HE path (TenSEAL CKKS),
  extra ``pip install 'threshold-fl[bench]'``.
"""

from __future__ import annotations

__all__: list[str] = []
