"""A ``Registry`` (rlkit/algorithms/registry.py) whose entries are import paths, loaded on use.

Rollout backends (``rlkit.rollout.ROLLOUT_BACKENDS``) and training backends
(``rlkit.backends.TRAIN_BACKENDS``) import vLLM or DeepSpeed, so registering one must not import
it: ``register_path(name, "package.module:factory")`` stores the path, and ``resolve(name)``
imports the module the first time the backend is built.  The registered names are known without
importing anything, which is what ``rlkit.config.check_config`` checks a config against.
"""
from __future__ import annotations

import importlib
from typing import Callable

from rlkit.algorithms.registry import Registry


class LazyRegistry(Registry):
    """Name -> ``"package.module:attribute"`` (or a callable registered with ``register``)."""

    def register_path(self, name: str, target: str) -> None:
        """Register ``name`` as the object at ``target`` (``"package.module:attribute"``),
        imported only by ``resolve``."""
        module, sep, attr = target.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"{self.kind} {name!r}: expected 'package.module:attribute', got {target!r}")
        if name in self and self[name] != target:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = target

    def resolve(self, name_or_callable: str | Callable) -> Callable:
        """The factory for a registered name (importing its module; an ImportError, such as vLLM
        missing, propagates unchanged), a callable unchanged, or a user's ``"module:function"``."""
        target = super().resolve(name_or_callable)
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            return getattr(importlib.import_module(module), attr)
        return target

    def choices(self) -> str:
        """The registered names for a message: ``"a, b or c"``."""
        names = sorted(self)
        return " or ".join(filter(None, [", ".join(names[:-1]), *names[-1:]]))
