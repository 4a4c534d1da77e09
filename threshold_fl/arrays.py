"""The array types the library passes around, named once.

``FloatArray`` is every float64 vector or tensor (model updates, decoded values,
images); the integer ones hold ring elements (``U64Array``: residues modulo a
prime, in OpenFHE's layout) and signed samples (``I64Array``: noise, centred
coefficients); ``IndexArray`` holds positions in a flat vector.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = ["Float32Array", "FloatArray", "I64Array", "IndexArray", "U64Array"]

FloatArray: TypeAlias = npt.NDArray[np.float64]
Float32Array: TypeAlias = npt.NDArray[np.float32]
U64Array: TypeAlias = npt.NDArray[np.uint64]
I64Array: TypeAlias = npt.NDArray[np.int64]
IndexArray: TypeAlias = npt.NDArray[np.int64]  # positions in a flat vector
