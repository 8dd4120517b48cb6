"""Name-to-constructor registries that drive the command line and the tests."""
from __future__ import annotations

import inspect
import numbers
from typing import Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named map of constructors, each with a one-line description."""

    def __init__(self, kind: str, sort: bool = True):
        self.kind, self.sort = kind, sort  # sort=False: names in the order they were registered
        self._items: dict[str, tuple[Callable[..., T], str]] = {}

    def register(self, name: str, description: str = "") -> Callable:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = (fn, description or (fn.__doc__ or "").strip().split("\n")[0])
            return fn

        return deco

    def unregister(self, name: str) -> None:
        """Remove a name (tests register throwaway entries)."""
        self._items.pop(name, None)

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._items[name][0]

    def check_args(self, name: str, kwargs: dict) -> None:
        """One ConfigError line for an argument whose default is true or false, or a number, given as anything else:
        a switch given as text (`asymmetric=maybe`) would read as true, and a number given as text
        (`temperature=hot`) would fail deep inside a step. Configs call it before any data is read."""
        try:
            params = inspect.signature(self.get(name)).parameters
        except (TypeError, ValueError):  # a constructor without a signature to read
            return
        for key, value in kwargs.items():
            default = params[key].default if key in params else None
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"{self.kind} {name!r}: {key} must be true or false, got {value!r}")
            elif isinstance(default, (int, float)) and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise ConfigError(f"{self.kind} {name!r}: {key} must be a number, got {value!r}")

    def build(self, name: str, *args, **kwargs) -> T:
        fn = self.get(name)
        self.check_args(name, kwargs)
        try:
            return fn(*args, **kwargs)
        except TypeError as e:  # an unknown keyword in a config's *_args
            if "unexpected keyword" in str(e):
                raise ConfigError(f"{self.kind} {name!r}: {e}") from None
            raise

    def names(self) -> list[str]:
        return sorted(self._items) if self.sort else list(self._items)

    def describe(self) -> dict[str, str]:
        return {n: self._items[n][1] for n in self.names()}

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self):
        return iter(self.names())

    def check(self, names) -> None:
        """A clear error for the first name that is not registered."""
        for n in names:
            self.get(n)
