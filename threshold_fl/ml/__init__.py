"""Machine-learning glue: turn torch model state into flat vectors and back, and choose
which of their coordinates are encrypted.

Names are imported lazily: the mask code needs only numpy, so the protocol layer can
use it without loading torch (which ``flatten`` needs).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from threshold_fl.ml.flatten import (
        ModelLayout as ModelLayout,
    )
    from threshold_fl.ml.flatten import (
        TensorSpec as TensorSpec,
    )
    from threshold_fl.ml.flatten import (
        flatten_state as flatten_state,
    )
    from threshold_fl.ml.flatten import (
        layout_of as layout_of,
    )
    from threshold_fl.ml.flatten import (
        restore_state as restore_state,
    )
    from threshold_fl.ml.flatten import (
        vector_to_state_dict as vector_to_state_dict,
    )
    from threshold_fl.ml.mask import (
        EncryptionMask as EncryptionMask,
    )
    from threshold_fl.ml.mask import (
        first_and_last_layers as first_and_last_layers,
    )
    from threshold_fl.ml.mask import (
        select_random_fraction as select_random_fraction,
    )
    from threshold_fl.ml.mask import (
        select_top_fraction as select_top_fraction,
    )

_HOMES = {
    "ModelLayout": "flatten",
    "TensorSpec": "flatten",
    "flatten_state": "flatten",
    "layout_of": "flatten",
    "restore_state": "flatten",
    "vector_to_state_dict": "flatten",
    "EncryptionMask": "mask",
    "first_and_last_layers": "mask",
    "select_random_fraction": "mask",
    "select_top_fraction": "mask",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'threshold_fl.ml' has no attribute {name!r}")
    return getattr(importlib.import_module(f"threshold_fl.ml.{home}"), name)
