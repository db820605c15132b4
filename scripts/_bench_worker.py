"""One measured run of scripts/bench_vs_trl.py, in a process of its own.

    python scripts/_bench_worker.py {rlkit|trl|floor} SPEC.json RESULT.json

``rlkit``: ``rlkit.trainer.train`` on the spec's config; per-step times and phases from
metrics.jsonl.  ``trl``: TRL's GRPOTrainer with the same model, prompts, group size,
completion length, loss, optimizer and precision; per-step times from a TrainerCallback.
``floor``: the same prompts through vLLM generation alone, then one forward/backward pass
alone over the generated sequences (no optimizer, no weight sync).

The result JSON has ``ok``, ``steps`` (one dict per step: ``step_s``, ``completion_tokens``,
``phases``), ``peak_rss_mb`` (this process, which holds the in-process vLLM engine too),
``peak_gpu_mb`` on CUDA, ``setup_s`` and, where the run failed, ``error``.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import prompt_rows, rlkit_config  # noqa: E402


def main() -> int:
    kind, spec_path, out_path = sys.argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    started = time.perf_counter()
    try:
        set_threads(spec)
        result = {"rlkit": run_rlkit, "trl": run_trl, "floor": run_floor}[kind](spec)
        result["ok"] = bool(result.get("steps"))
        if not result["ok"]:
            result.setdefault("error", "no step finished")
    except BaseException as exc:  # recorded for the report; the parent goes on with the next run
        traceback.print_exc()
        result = {"ok": False, "error": describe_error(exc)}
    result["worker_wall_s"] = round(time.perf_counter() - started, 1)
    result.update(memory_peaks())
    Path(out_path).write_text(json.dumps(result, indent=2))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: engines and thread pools sometimes hang in it


def describe_error(exc: BaseException) -> str:
    """The exception with where it was raised and the last TRL / rlkit frame on the way."""
    frames = traceback.extract_tb(exc.__traceback__)

    def where(frame) -> str:
        path = frame.filename.split("site-packages/")[-1]
        return f"{path}:{frame.lineno} in {frame.name}"

    text = f"{type(exc).__name__}: {exc}"[:1500]
    if frames:
        text += f" (raised at {where(frames[-1])}"
        caller = next((f for f in reversed(frames[:-1]) if "/trl/" in f.filename or "/rlkit/" in f.filename), None)
        text += f"; called from {where(caller)})" if caller else ")"
    return text


def set_threads(spec: dict) -> None:
    """``--threads``: torch's intra-op threads for this run (None: torch's default, every core)."""
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])


def memory_peaks() -> dict:
    """Peak resident memory of this process (and its reaped children) in MiB; peak CUDA memory
    reserved by torch's allocator where CUDA is used (vLLM's KV cache included)."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = {"peak_rss_mb": round(max(self_kb, child_kb) / 1024, 1)}
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["peak_gpu_mb"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    except Exception:
        pass
    return out


# ---------------------------------------------------------------- rlkit

def run_rlkit(spec: dict) -> dict:
    """rlkit's trainer on the spec; the run folder keeps config and metrics, not checkpoints."""
    import yaml

    from rlkit.config import load_config
    from rlkit.trainer import train

    run_dir = Path(spec["run_dir"])
    config_path = run_dir / "bench_config.yaml"
    config_path.write_text(yaml.safe_dump(rlkit_config(spec), sort_keys=False))
    t0 = time.perf_counter()
    cfg = load_config(config_path)
    train(cfg)
    total = time.perf_counter() - t0
    steps = read_rlkit_steps(run_dir / "metrics.jsonl", spec["prompts"] * spec["group"])
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the last-step checkpoint
    return {"steps": steps, "setup_s": round(total - sum(s["step_s"] for s in steps), 1)}


def read_rlkit_steps(metrics_path: Path, rows_per_step: int) -> list[dict]:
    """Per-step time, completion tokens and phase times from rlkit's metrics.jsonl."""
    steps = []
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") != "train":
            continue
        steps.append({
            "step_s": record["time/step"],
            "completion_tokens": round(record["response_length"] * rows_per_step),
            "phases": {k[5:]: v for k, v in record.items() if k.startswith("time/") and k != "time/step"},
            "trained_rows": record.get("trained_rows"),
        })
    return steps


# ---------------------------------------------------------------- TRL

SEEN_PROMPTS: list[list[str]] = []   # the user messages TRL scored, one list per reward call


def vowel_fraction_reward(completions, prompts=None, **kwargs) -> list[float]:
    """rlkit.testing_rewards.vowel_fraction on TRL's completions (chat messages or text); also
    notes which prompts TRL generated for, to check they are rlkit's."""
    from rlkit.testing_rewards import vowel_fraction

    SEEN_PROMPTS.append([p[-1]["content"] if isinstance(p, list) else p for p in prompts or []])
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return vowel_fraction(texts)


def run_trl(spec: dict) -> dict:
    """TRL's GRPOTrainer on the same prompts (in rlkit's order), group size, completion length,
    GRPO loss (``loss_type="grpo"``: per-sequence token mean), PPO clip 0.2, no KL, AdamW with
    the same LR / betas / clip, one optimizer step per batch, the same precision."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlkit.models import load_tokenizer

    t0 = time.perf_counter()
    per_step = prompt_rows(spec)
    rows = [r for step_rows in per_step for r in step_rows]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
                                 for r in rows])
    batch = spec["prompts"] * spec["group"]
    cuda = torch.cuda.is_available()
    vllm = spec["backend"] == "vllm"
    args = GRPOConfig(
        output_dir=spec["run_dir"], max_steps=spec["steps"], seed=spec["seed"],
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=spec["group"], max_completion_length=spec["length"], shuffle_dataset=False,
        temperature=1.0, top_p=1.0, top_k=0,
        loss_type="grpo", beta=0.0, epsilon=0.2, scale_rewards="group", num_iterations=1,
        mask_truncated_completions=False,
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
        gradient_checkpointing=False, bf16=spec["precision"] == "bf16", use_cpu=not cuda,
        disable_dropout=True, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0,
        use_vllm=vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=spec["gpu_memory_utilization"],
        vllm_max_model_length=spec["max_model_len"], vllm_importance_sampling_correction=False,
    )
    tokenizer = load_tokenizer(spec["model_path"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=torch.float32)
    timer = StepTimer(TrainerCallback)
    trainer = GRPOTrainer(model=model, reward_funcs=[vowel_fraction_reward], args=args,
                          train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    timer.wrap(trainer, "_generate_single_turn", "generate")   # vLLM mode: includes the weight sync
    timer.wrap(trainer, "_calculate_rewards", "score")
    if getattr(trainer, "vllm_generation", None) is not None:
        timer.wrap(trainer.vllm_generation, "sync_weights", "sync")
    trainer.train()
    total = time.perf_counter() - t0
    steps = timer.steps(batch)
    expected = [sorted(r["prompt"] for r in step_rows for _ in range(spec["group"])) for step_rows in per_step]
    same = [sorted(seen) for seen in SEEN_PROMPTS] == expected[:len(SEEN_PROMPTS)]
    return {"steps": steps, "setup_s": round(total - sum(s["step_s"] for s in steps), 1),
            "same_prompts_as_rlkit": same and len(SEEN_PROMPTS) == len(steps)}


def StepTimer(base):
    """A TrainerCallback (class built on ``base``) that times on_step_begin -> on_step_end,
    the phases of wrapped trainer methods within each step, and keeps each step's logged
    metrics (TRL's completion lengths)."""

    class _StepTimer(base):
        def __init__(self):
            self.begin = None
            self.times: list[float] = []
            self.current: dict[str, float] = {}
            self.phases: list[dict[str, float]] = []
            self.logs: dict[int, dict] = {}

        def wrap(self, owner, method: str, phase: str) -> None:
            """Add the time spent in ``owner.method`` to ``phase`` of the current step."""
            original = getattr(owner, method)

            def timed(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.current[phase] = self.current.get(phase, 0.0) + time.perf_counter() - t0

            setattr(owner, method, timed)

        def on_step_begin(self, args, state, control, **kwargs):
            self.current = {}
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds = time.perf_counter() - self.begin
            self.times.append(seconds)
            phases = dict(self.current)
            if "sync" in phases:          # the sync runs inside the generation call
                phases["generate"] = phases.get("generate", 0.0) - phases["sync"]
            # old log-probs (none here: one on-policy pass), loss, backward, optimizer step
            phases["train"] = seconds - sum(phases.values())
            self.phases.append(phases)

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.setdefault(state.global_step, {}).update(logs or {})

        def steps(self, rows_per_step: int) -> list[dict]:
            out = []
            for i, seconds in enumerate(self.times, start=1):
                logs = self.logs.get(i, {})
                length = logs.get("completions/mean_length")
                out.append({
                    "step_s": seconds,
                    "completion_tokens": round(length * rows_per_step) if length is not None else None,
                    "phases": self.phases[i - 1],
                })
            return out

    return _StepTimer()


# ---------------------------------------------------------------- the floor

def run_floor(spec: dict) -> dict:
    """vLLM generation alone (an in-process engine with rlkit's settings, no log-probs), then one
    plain forward/backward pass alone over the prompt + completion batch (bf16 autocast as in
    training, LM head on completion positions only, a policy-gradient loss, no optimizer)."""
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from rlkit.batch import build_batch
    from rlkit.config import DataConfig
    from rlkit.data import prompt_token_ids
    from rlkit.models import load_causal_lm, load_tokenizer
    from rlkit.rollout import engine_dtype

    t0 = time.perf_counter()
    cfg = rlkit_config(spec)
    data = DataConfig(**{**cfg["data"], "levels": tuple(cfg["data"]["levels"])})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(spec["model_path"])
    llm = LLM(model=spec["model_path"], tokenizer=spec["model_path"], dtype=engine_dtype(cfg["rollout"]["dtype"]),
              seed=spec["seed"], gpu_memory_utilization=spec["gpu_memory_utilization"],
              max_model_len=spec["max_model_len"], enforce_eager=True, enable_prefix_caching=True)
    model = load_causal_lm(spec["model_path"], "float32", device)
    params = SamplingParams(n=spec["group"], temperature=1.0, top_p=1.0, max_tokens=spec["length"])
    autocast = spec["precision"] == "bf16"
    setup = time.perf_counter() - t0
    steps = []
    for rows in prompt_rows(spec):
        prompts = prompt_token_ids(rows, tokenizer, data)
        t_gen = time.perf_counter()
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        gen_s = time.perf_counter() - t_gen
        completions = [(i, list(c.token_ids)) for i, o in enumerate(outputs) for c in o.outputs]
        batch = build_batch([prompts[i] for i, _ in completions], [c for _, c in completions],
                            [i for i, _ in completions], [True] * len(completions), tokenizer.pad_token_id)
        fb_s = forward_backward(model, batch.to(device), autocast)
        steps.append({"step_s": gen_s + fb_s, "completion_tokens": int(batch.loss_mask.sum()),
                      "phases": {"generate": gen_s, "forward_backward": fb_s}})
    return {"steps": steps, "setup_s": round(setup, 1)}


def forward_backward(model, batch, autocast: bool) -> float:
    """Seconds of one forward/backward pass over the whole batch (then the gradients are dropped):
    rlkit's plain log-prob pass (``forward_logprobs``: LM head on completion positions only,
    block-wise log-probs, no entropy, no shared prompt) and a policy-gradient loss with stand-in advantages."""
    import torch

    from rlkit.backends.single import forward_logprobs

    sync = torch.cuda.synchronize if batch.input_ids.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    logp, _ = forward_logprobs(model, batch, with_entropy=False, autocast=autocast)
    weights = torch.randn(logp.shape[0], 1, device=logp.device)   # stand-in advantages
    loss = -(logp * weights).sum() / batch.loss_mask.sum()        # logp is 0 outside loss_mask
    loss.backward()
    sync()
    seconds = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return seconds


if __name__ == "__main__":  # vLLM on CPU needs the entry point guarded
    sys.exit(main())
