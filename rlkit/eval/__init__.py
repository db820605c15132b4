"""Evaluation: held-out accuracy during training (heldout.py) and ``rlkit eval`` benchmarks
(benchmarks.py, metrics.py, runner.py, report.py).  Nothing heavy is imported here: the CLI
imports the module it needs."""
