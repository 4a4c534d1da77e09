"""Argument checks shared by the library's public functions and its commands.

One place for "an int in a range" so every function says it the same way, and one
argparse type factory so every command's range errors read alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from threshold_fl.errors import ParameterError

__all__ = ["bounded", "checked_int"]

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
