"""Argument checks shared by the library's public functions and its commands.

One place for "an int in a range" so every function says it the same way, one argparse
type factory so every command's range errors read alike, and one ``--model`` option so
every command refuses an unknown model name the same way, before any work.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Collection, Iterator
from typing import Any, Protocol, TypeVar

from threshold_fl.errors import ParameterError

__all__ = ["MODEL_NAMES", "add_model_option", "bounded", "checked_int"]

Number = TypeVar("Number", int, float)


def checked_int(value: object, what: str, minimum: int, maximum: int | None = None) -> int:
    """*value* if it is an int (not a bool) in [minimum, maximum], else ParameterError."""
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        limit = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ParameterError(f"{what} must be an int {limit}, got {value!r}")
    return value


def bounded(kind: Callable[[str], Number], low: Number, high: Number | None = None
            ) -> Callable[[str], Number]:
    """An argparse ``type=`` that parses with *kind* and checks low <= value <= high."""

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            name = getattr(kind, "__name__", "number")
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {name}") from None
        if value < low or (high is not None and value > high):
            limit = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"{text} must be {limit}")
        return value

    parse.__name__ = getattr(kind, "__name__", "number")  # argparse names it in errors
    return parse


@functools.cache
def _model_names() -> tuple[str, ...]:
    from threshold_fl.ml.models import MODELS  # torch: only once a name is checked or listed

    return tuple(sorted(MODELS))


class _ModelNames(Collection[str]):
    """The model registry's names, read on first use: argparse only looks at ``choices``
    to check a given ``--model`` or to print help, so building a parser (``manifest
    --model-length``, say) does not pay for importing torch."""

    def __contains__(self, name: object) -> bool:
        return name in _model_names()

    def __iter__(self) -> Iterator[str]:
        return iter(_model_names())

    def __len__(self) -> int:
        return len(_model_names())


#: The names ``--model`` accepts: :data:`threshold_fl.ml.models.MODELS`, sorted.
MODEL_NAMES: Collection[str] = _ModelNames()


class _ArgumentContainer(Protocol):
    """An ArgumentParser or one of its groups (argparse's own base class is private)."""

    def add_argument(self, *names: str, **options: Any) -> argparse.Action: ...


def add_model_option(parser: _ArgumentContainer, *, default: str | None = "cnn",
                     what: str = "the model to train") -> argparse.Action:
    """``--model NAME``: argparse refuses a name not in the registry (exit 2, naming the
    valid ones) and ``--help`` lists them."""
    default_text = "" if default is None else " (default: %(default)s)"
    return parser.add_argument("--model", choices=MODEL_NAMES, default=default,
                               metavar="MODEL",
                               help=f"{what}: one of %(choices)s{default_text}")


# Evidence in docs/privacy.md: selective encryption at the paper's fractions did not stop
# gradient inversion of a real upload, so the commands encrypt everything unless told.
SELECTIVE_WARNING = (
    "warning: --fraction {fraction:g} encrypts only part of each update; the aggregator sees "
    "the rest in the clear, and at the paper's fractions that did not stop reconstruction "
    "of training images (docs/privacy.md); the default --fraction 1.0 encrypts everything")


def add_mask_options(parser: _ArgumentContainer) -> None:
    """``--fraction`` (default 1.0: encrypt everything) and ``--no-first-last``."""
    parser.add_argument(
        "--fraction", type=bounded(float, 0.0, 1.0), default=1.0,
        help="share of coordinates encrypted, the top of the sensitivity map (default 1.0: "
             "all; below 1 is selective encryption, which docs/privacy.md shows did not "
             "protect the plaintext part against gradient inversion)")
    parser.add_argument("--no-first-last", action="store_true",
                        help="with --fraction below 1: do not add the first and last layers "
                             "to the mask")


def selective_warning(fraction: float, mode: str) -> str | None:
    """The one-line warning for selective encryption, or None when nothing is left clear
    by choice (everything encrypted, or plaintext mode, which encrypts nothing anyway)."""
    if fraction >= 1.0 or mode == "plaintext":
        return None
    return SELECTIVE_WARNING.format(fraction=fraction)
