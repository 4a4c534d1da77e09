"""threshold-fl: privacy-preserving federated learning with threshold CKKS (OpenFHE).

Importing this package is deliberately light: it checks the Python version and
exposes the version and the error classes.  OpenFHE and torch are imported only
by the modules that need them (``threshold_fl.crypto``, ``threshold_fl.ml``).
"""

# First of all: refuse any Python but 3.10, with a message that says why and
# what to do (see _pyversion.py).  This file must therefore parse on any Python 3.
from threshold_fl import _pyversion

_pyversion.check()

from threshold_fl.errors import (  # noqa: E402  (after the guard on purpose)
    AuthenticationError,
    CryptoError,
    EnvironmentError_,
    FrameError,
    IdentityError,
    KeyMismatchError,
    ModelLayoutError,
    ParameterError,
    ThresholdFLError,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "CryptoError",
    "EnvironmentError_",
    "FrameError",
    "IdentityError",
    "KeyMismatchError",
    "ModelLayoutError",
    "ParameterError",
    "ThresholdFLError",
    "__version__",
]
