"""Name -> function registries for advantage estimators and policy losses."""
from __future__ import annotations

import importlib
from typing import Callable


class Registry(dict):
    """A dict of named functions with a ``register`` decorator and a ``resolve`` lookup.

    ``resolve`` accepts a registered name, a callable (returned unchanged) or an import path
    ``"package.module:function"``, so a config can name a user's own function.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[Callable], Callable]:
        def decorator(fn: Callable) -> Callable:
            if name in self and self[name] is not fn:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = fn
            return fn

        return decorator

    def resolve(self, name_or_callable: str | Callable) -> Callable:
        if callable(name_or_callable):
            return name_or_callable
        name = name_or_callable
        if isinstance(name, str) and ":" in name:
            module, _, attr = name.partition(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ValueError(f"cannot import {self.kind} {name!r}: {exc}") from exc
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}")
        return self[name]
