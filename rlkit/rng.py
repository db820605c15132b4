"""All global RNG states of a process in one torch.load-safe dict (for checkpoints).

Python ``random``, torch CPU, torch CUDA (only once CUDA is initialised: an unused CUDA
generator has drawn nothing) and numpy's legacy global generator (vLLM seeds it; user reward
code may draw from it).
"""
from __future__ import annotations

import random

import torch


def rng_state() -> dict:
    """Python, torch CPU, torch CUDA (when initialised) and numpy RNG states (torch.load-safe)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state()`` returned (a CUDA state only where CUDA is available)."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        np.random.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                             s["cached_gaussian"]))
