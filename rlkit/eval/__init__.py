"""Evaluation: held-out accuracy during training (benchmarks arrive with `rlkit eval`)."""
from rlkit.eval.heldout import evaluate_heldout

__all__ = ["evaluate_heldout"]
