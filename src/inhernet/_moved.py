"""Knobs that left a public config: passing one raises a ``TypeError`` that says where it went, or why it
was removed (a plain dataclass would only say ``unexpected keyword argument``)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["refuse_moved"]

T = TypeVar("T", bound=type)


def refuse_moved(moved: Mapping[str, str]) -> Callable[[T], T]:
    """Class decorator (above ``@dataclass``): a keyword of ``moved`` that is not a field of the class (or
    of a subclass that makes it one again) raises ``TypeError(f"{Class} has no {name!r}: {moved[name]}")``."""

    def decorate(cls: T) -> T:
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            known = {f.name for f in dataclasses.fields(self)}
            gone = [name for name in kwargs if name in moved and name not in known]
            if gone:
                raise TypeError(f"{type(self).__name__} has no {gone[0]!r}: {moved[gone[0]]}")
            init(self, *args, **kwargs)

        cls.__init__ = __init__  # type: ignore[misc]
        return cls

    return decorate
