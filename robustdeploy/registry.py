"""One small registry class; one instance per kind (models, datasets, attacks, defenses, runtimes)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from robustdeploy.errors import RobustDeployError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; `create` drops None kwargs so CLI defaults never override a factory's own."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._entries:
            raise RobustDeployError(self.unknown_message(name))
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def unknown_message(self, name: str) -> str:
        known = ", ".join(self.names())
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} known: {known}"
