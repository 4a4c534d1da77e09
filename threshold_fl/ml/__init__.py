"""Machine-learning glue: turn torch model state into flat vectors and back."""

from threshold_fl.ml.flatten import (
    ModelLayout,
    TensorSpec,
    flatten_state,
    layout_of,
    restore_state,
    vector_to_state_dict,
)

__all__ = [
    "ModelLayout",
    "TensorSpec",
    "flatten_state",
    "layout_of",
    "restore_state",
    "vector_to_state_dict",
]
