"""Load-time checks of the sampling options (``rollout.top_k``, ``min_p``, ``repetition_penalty``,
``stop``): what no engine can honour is refused when the config loads, with the key named,
rather than by vLLM or transformers at the first generation.  ``Sampling`` (rlkit/rollout)
applies the same rules to options built in code."""
from __future__ import annotations

import math
from typing import Any, Callable


def sampling_problems(top_k: Any, min_p: Any, repetition_penalty: Any, stop: Any) -> list[tuple[str, str]]:
    """(option, message) for each option value that no backend can apply."""
    problems = []
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < -1:
        problems.append(("top_k", f"must be an integer >= 1, or -1 / 0 for off; got {top_k!r}"))
    if isinstance(min_p, bool) or not isinstance(min_p, (int, float)) or not 0 <= min_p < 1:
        problems.append(("min_p", f"must be in [0, 1) (0: off); got {min_p!r}"))
    if (isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, (int, float))
            or not (repetition_penalty > 0 and math.isfinite(repetition_penalty))):
        problems.append(("repetition_penalty", f"must be a finite number > 0 (1: off); got {repetition_penalty!r}"))
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        problems.append(("stop", f"must be a list of strings, e.g. ['</answer>']; got {stop!r}"))
    elif any(s == "" for s in stop):
        problems.append(("stop", f"an empty stop string would end every completion at once; got {list(stop)!r}"))
    return problems


def check_sampling(cfg: Any, error: Callable[[str, str], None]) -> None:
    """``rollout.top_k``, ``min_p``, ``repetition_penalty`` and ``stop``; ``error(key, message)``
    raises.  With ``rollout.temperature=0`` (greedy) ``top_k`` and ``min_p`` would change
    nothing, so setting them is refused too (``repetition_penalty`` and ``stop`` still act)."""
    r = cfg.rollout
    for option, message in sampling_problems(r.top_k, r.min_p, r.repetition_penalty, r.stop):
        error(f"rollout.{option}", message)
    if r.temperature <= 0:
        for option, value, off in (("top_k", r.top_k, r.top_k in (-1, 0)), ("min_p", r.min_p, r.min_p == 0)):
            if not off:
                error(f"rollout.{option}", f"{value!r} has no effect with rollout.temperature=0 (greedy decoding "
                      "takes the most likely token); remove it or set a temperature > 0")
