"""Rollout and training backends as lazy registries (rlkit/lazy_registry.py): names known without
importing vLLM or DeepSpeed, config checks and command-line choices taken from them, and
``make_rollout`` / ``make_backend`` building whatever is registered."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import subprocess_env, tiny_overrides
from rlkit.backends import TRAIN_BACKENDS
from rlkit.config import ConfigError, load_config
from rlkit.lazy_registry import LazyRegistry
from rlkit.rollout import ROLLOUT_BACKENDS, RolloutSetup, local_backends, make_rollout


def test_registered_names_and_their_messages():
    assert sorted(ROLLOUT_BACKENDS) == ["hf", "vllm", "vllm_server"]
    assert sorted(TRAIN_BACKENDS) == ["deepspeed", "single"]
    assert local_backends() == ["hf", "vllm"]
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["rollout.backend=vlm"])
    assert str(exc.value) == "rollout.backend: unknown backend 'vlm'; choose hf, vllm or vllm_server"
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["backend.name=fsdp"])
    assert str(exc.value) == "backend.name: unknown training backend 'fsdp'; choose deepspeed or single"


def test_naming_the_backends_imports_neither_vllm_nor_deepspeed():
    code = ("import sys\n"
            "from rlkit.config import load_config\n"
            "from rlkit.rollout import ROLLOUT_BACKENDS\n"
            "from rlkit.backends import TRAIN_BACKENDS\n"
            "load_config(None, ['rollout.backend=vllm', 'backend.name=deepspeed'])\n"
            "assert 'vllm' in ROLLOUT_BACKENDS and 'deepspeed' in TRAIN_BACKENDS\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'deepspeed')\n"
            "               or m in ('rlkit.rollout.vllm', 'rlkit.rollout.vllm_server', 'rlkit.backends.deepspeed'))\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_a_registered_backend_is_accepted_by_the_config_and_built():
    from rlkit.rollout.hf import HFRollout

    ROLLOUT_BACKENDS.register_path("hf_again", "rlkit.rollout.hf:build")
    try:
        cfg = load_config(None, ["rollout.backend=hf_again"])
        rollout = make_rollout(cfg.rollout.backend, "the policy", "a tokenizer", "path", cfg.rollout)
        assert isinstance(rollout, HFRollout) and rollout.model == "the policy" and rollout.tokenizer == "a tokenizer"
    finally:
        del ROLLOUT_BACKENDS["hf_again"]
    with pytest.raises(ConfigError, match="rollout.backend: unknown backend 'hf_again'"):
        load_config(None, ["rollout.backend=hf_again"])


def test_make_backend_builds_the_registered_class(tiny_model, one_thread):
    from rlkit.backends import make_backend
    from rlkit.backends.single import SingleBackend

    cfg = load_config(None, tiny_overrides(tiny_model))
    assert TRAIN_BACKENDS.resolve("single") is SingleBackend
    backend = make_backend(cfg, total_optimizer_steps=3)
    assert isinstance(backend, SingleBackend) and backend.world_size == 1


def test_lazy_registry_imports_on_resolve_only():
    reg = LazyRegistry("widget")
    reg.register_path("missing", "rlkit_no_such_module:make")  # registering imports nothing
    reg.register_path("setup", "rlkit.rollout:RolloutSetup")
    reg.register_path("setup", "rlkit.rollout:RolloutSetup")   # the same path again is fine
    assert reg.resolve("setup") is RolloutSetup
    with pytest.raises(ModuleNotFoundError, match="rlkit_no_such_module"):
        reg.resolve("missing")
    with pytest.raises(ValueError, match="unknown widget 'other'; known: missing, setup"):
        reg.resolve("other")
    with pytest.raises(ValueError, match="widget 'setup' is already registered"):
        reg.register_path("setup", "rlkit.rollout:Sampling")
    with pytest.raises(ValueError, match="expected 'package.module:attribute'"):
        reg.register_path("bad", "rlkit.rollout.RolloutSetup")
    assert reg.choices() == "missing or setup" and LazyRegistry("x").choices() == ""


def test_eval_cli_offers_the_in_process_backends():
    import argparse

    from rlkit.eval_cli import add_eval_arguments

    parser = add_eval_arguments(argparse.ArgumentParser())
    assert parser.parse_args(["--benchmark", "arith", "--backend", "hf"]).backend == "hf"
    with pytest.raises(SystemExit):
        parser.parse_args(["--benchmark", "arith", "--backend", "vllm_server"])
