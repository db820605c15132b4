"""Running benchmarks: generate with a rollout backend, judge, summarise.

- ``evaluate(rollout, tokenizer, rows, benchmark, ...)``: one benchmark on rows of
  ``rlkit.eval.benchmarks.load_benchmark``; returns ``(metrics, records)``.
- ``episode_prompt_ids(runner, rows)``: the prompt ids of multi-turn episodes (to size a context).
- ``evaluate_benchmarks(rollout, tokenizer, specs, step)``: what a trainer calls during training
  with a list of benchmark specs; returns ``bench/<name>/<metric>`` floats.
- ``BestCheckpoint``: remembers the best value of one metric (keep the best checkpoint by it).
- ``resolve_eval_model(model, scratch)``: a model folder for ``--model`` (a model folder,
  ``embedded:NAME``, a run folder or a checkpoint folder).

Rows are generated in one ``rollout.generate`` call (``n = samples`` completions per prompt);
greedy decoding is ``temperature = 0``.  With an ``EpisodeRunner`` (rlkit/agents; ``rlkit eval
--env``, a spec's ``env``) every completion is a multi-turn episode with executed tools instead,
judged on its final text.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rlkit.eval.benchmarks import DEFAULT_MAX_NEW_TOKENS, check_benchmark, judge, load_benchmark, vote_equal
from rlkit.eval.metrics import summarize
from rlkit.eval.specs import check_specs

logger = logging.getLogger("rlkit.eval")

NO_PROMPT_LIMIT = 10 ** 9


def prompt_ids(rows: Sequence[dict], tokenizer, chat_template: bool = True, system_prompt: str | None = None,
               max_prompt_tokens: int | None = None) -> list[list[int]]:
    """Token ids of the rows' prompts (``rlkit.data.prompt_token_ids``; prompts longer than
    ``max_prompt_tokens`` keep their end)."""
    from rlkit.data import prompt_token_ids

    cfg = SimpleNamespace(chat_template=chat_template, system_prompt=system_prompt,
                          max_prompt_tokens=max_prompt_tokens or NO_PROMPT_LIMIT, truncation="left")
    return prompt_token_ids(list(rows), tokenizer, cfg)


def episode_prompt_ids(runner, rows: Sequence[dict]) -> list[list[int]]:
    """The prompt ids ``runner.run`` starts each row's episodes with (its environment's first
    messages with the tool schemas, through the runner's ``ChatRenderer``): what sizes an
    engine's context for ``max_episode_tokens`` more."""
    return [runner.start(row)[2] for row in rows]


def evaluate(rollout, tokenizer, rows: Sequence[dict], benchmark: str, *, samples: int = 1,
             temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int | None = None,
             chat_template: bool = True, system_prompt: str | None = None, max_prompt_tokens: int | None = None,
             ids: list[list[int]] | None = None, sandbox: Any = None,
             seed: int = 0, runner: Any = None) -> tuple[dict[str, float], list[dict]]:
    """Generate ``samples`` completions per row, judge them, summarise.

    Returns ``(metrics, records)``: metrics of ``rlkit.eval.metrics.summarize`` (``accuracy``;
    ``pass@k`` and ``maj@n`` when ``samples > 1``; breakdowns) and one record per row with its
    samples (``completion``, ``extracted``, ``correct``, ``reason``, ``tokens``, ``finished``).
    ``ids``: the prompts already tokenized (as ``prompt_ids`` does). Sampling with the hf backend
    draws from torch's generators seeded with ``seed`` inside ``torch.random.fork_rng``, so the
    caller's (the trainer's) RNG states are left as they were.

    ``runner`` (an ``rlkit.agents.EpisodeRunner``): each completion is an episode of
    ``runner.run(rows, Sampling(n=samples, ...))`` on the runner's backend (``rollout`` is not
    used), seeded the same way; ``max_new_tokens`` is per turn, and the prompts are the runner's
    (its environment's first messages with the tool schemas), so ``ids``, ``chat_template``,
    ``system_prompt`` and ``max_prompt_tokens`` do not apply. The judged text is the episode's
    final text (``Episode.text``); a sample adds ``turns``, ``tool_calls``, ``tool_errors``,
    ``truncated`` and the ``transcript``, its ``tokens`` are the model's tokens only, it is
    ``finished`` when the episode ended on its own (not truncated, its last turn not cut at
    ``max_new_tokens``), and an episode whose environment failed is incorrect. The metrics add
    ``turns_mean``, ``tool_calls_per_episode``, ``tool_errors_per_episode`` and
    ``truncated_frac`` (``rlkit.eval.metrics.episode_summary``).
    """
    from rlkit.rollout import Sampling

    check_benchmark(benchmark)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if runner is not None and ids is not None:
        raise ValueError("evaluate: give ids or runner, not both (an episode's prompt ids come from its runner)")
    if not rows:
        return summarize([]), []
    max_new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[benchmark]
    if runner is not None:
        sampling = Sampling(n=samples, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        episodes = _seeded(lambda: runner.run(list(rows), sampling), sampling, seed)
        empty = sum(not e.turns for e in episodes)
        if empty:
            logger.warning("%d of %d episodes had no room for a turn: their prompt fills the context "
                           "(max_model_len %s)", empty, len(episodes), runner.max_model_len)
        return _episode_results(rows, episodes, benchmark, sandbox)
    if ids is None:
        ids = prompt_ids(rows, tokenizer, chat_template, system_prompt, max_prompt_tokens)
    sampling = Sampling(n=samples, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    gens = _seeded(lambda: rollout.generate(ids, sampling), sampling, seed)
    per_row: list[list[Any]] = [[] for _ in rows]
    for gen in gens:
        per_row[gen.prompt_index].append(gen)
    completions = [[g.text for g in row_gens] for row_gens in per_row]
    verdicts = judge(benchmark, rows, completions, sandbox=sandbox)
    records = []
    for index, (row, row_gens, row_verdicts) in enumerate(zip(rows, per_row, verdicts)):
        samples_out = [{"completion": g.text, **v, "tokens": len(g.token_ids), "finished": g.finished}
                       for g, v in zip(row_gens, row_verdicts)]
        records.append(_record(index, row, samples_out))
    metrics = summarize(records, vote_equal(benchmark))
    return metrics, records


def _record(index: int, row: dict, samples: list[dict]) -> dict:
    return {"index": index, "id": row.get("id", index), "category": row.get("category"),
            "groups": dict(row.get("groups") or {}), "question": row.get("question", row["prompt"]),
            "answer": row.get("answer"), "samples": samples}


def _episode_results(rows: Sequence[dict], episodes: list, benchmark: str,
                     sandbox: Any) -> tuple[dict[str, float], list[dict]]:
    """Records and metrics of multi-turn episodes (``evaluate`` with a runner)."""
    per_row: list[list[Any]] = [[] for _ in rows]
    for episode in episodes:
        per_row[episode.prompt_index].append(episode)
    verdicts = judge(benchmark, rows, [[e.text for e in row_eps] for row_eps in per_row], sandbox=sandbox)
    records = []
    for index, (row, row_eps, row_verdicts) in enumerate(zip(rows, per_row, verdicts)):
        samples_out = []
        for e, verdict in zip(row_eps, row_verdicts):
            finished = not e.truncated and e.env_error is None and bool(e.turns) and e.turns[-1].stop != "length"
            sample = {"completion": e.text, **verdict, "tokens": sum(e.model_mask), "finished": finished,
                      "turns": len(e.turns), "tool_calls": e.tool_calls, "tool_errors": e.tool_errors,
                      "truncated": e.truncated, "transcript": e.messages}
            if e.env_error is not None:  # the episode ended early: not the model's answer
                sample.update(correct=False, vote=None, env_error=e.env_error,
                              reason=f"environment failed: {e.env_error}")
                if "correct_strict" in sample:
                    sample["correct_strict"] = False
            samples_out.append(sample)
        records.append(_record(index, row, samples_out))
    return summarize(records, vote_equal(benchmark)), records


def _seeded(generate, sampling, seed: int):
    """``generate()``; when sampling, inside ``torch.random.fork_rng`` with torch seeded by ``seed``."""
    import torch

    if sampling.temperature <= 0:
        return generate()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return generate()


# ---- during training -------------------------------------------------------------------------

_ROWS_CACHE: dict[str, list[dict]] = {}


def _spec_rows(spec: dict) -> list[dict]:
    key = json.dumps({k: spec.get(k) for k in ("benchmark", "data", "limit", "tables", "db_dir", "instruction",
                                               "levels", "underscore_to_dot")}, sort_keys=True, default=str)
    if key not in _ROWS_CACHE:
        _ROWS_CACHE[key] = load_benchmark(spec["benchmark"], spec.get("data"), limit=spec.get("limit"),
                                          tables=spec.get("tables"), db_dir=spec.get("db_dir"),
                                          instruction=spec.get("instruction"), levels=spec.get("levels"),
                                          underscore_to_dot=bool(spec.get("underscore_to_dot")))
    return _ROWS_CACHE[key]


def evaluate_benchmarks(rollout, tokenizer, specs: Sequence[dict], step: int, *,
                        output_dir: str | Path | None = None, max_model_len: int | None = None,
                        share: Any = None, gather: Any = None) -> dict[str, float]:
    """Run every benchmark spec with the trainer's rollout engine; ``bench/<name>/<metric>`` floats.

    A spec is ``{"name", "benchmark", "data", "limit", "max_new_tokens", "samples", "temperature",
    "top_p", "tables", "db_dir", "instruction", "levels", "chat_template", "system_prompt",
    "max_prompt_tokens", "underscore_to_dot", "env", "max_turns", "max_episode_tokens", "env_kwargs"}``
    (only ``benchmark`` is required; ``data`` too except for arith; ``underscore_to_dot``:
    toolcall's BFCL function-calling-model naming, ``rlkit.eval.benchmarks``). Rows are loaded
    once per process and cached. With ``output_dir`` each benchmark's predictions and
    summary go to ``<output_dir>/<name>/step_<step>/`` (no chart). Metric names: ``accuracy``,
    ``pass@k``, ``maj@n``, ``response_tokens``, ``n``, ``skipped``, ``accuracy_by_<field>/<value>``.
    Greedy unless a spec asks for ``samples > 1`` (then temperature 1.0 unless given).
    ``max_model_len`` (the engine's context, ``rollout.max_model_len``): prompts keep their last
    ``max_model_len - max_new_tokens`` tokens unless a spec sets ``max_prompt_tokens``.

    A spec with ``env`` (and optionally ``max_turns``, ``max_episode_tokens``, ``env_kwargs``)
    runs multi-turn episodes: an ``EpisodeRunner`` is built for it on ``rollout`` (its tool
    workers are stopped after the benchmark), ``max_new_tokens`` is per turn, episodes stop at
    ``max_model_len``, and the metrics add ``turns_mean``, ``tool_calls_per_episode``,
    ``tool_errors_per_episode`` and ``truncated_frac``.

    Data parallel: with ``share`` (a ``RankShare``) and ``gather`` (an all-gather of Python
    objects, e.g. the backend's ``all_gather_object``) every engine generates for its share of the
    rows only; the records of all shares are gathered and every rank returns the metrics of all
    rows (the reports are written by the rank given ``output_dir``).
    """
    from rlkit.config_checks import environment_problem

    out: dict[str, float] = {}
    for spec in check_specs(specs, check_env=environment_problem):
        rows = _spec_rows(spec)
        indices = list(range(len(rows))) if share is None else share.generation_indices(len(rows))
        samples = int(spec.get("samples") or 1)
        temperature = spec.get("temperature")
        temperature = float(temperature) if temperature is not None else (0.0 if samples == 1 else 1.0)
        max_new = int(spec.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS[spec["benchmark"]])
        max_prompt = spec.get("max_prompt_tokens")
        episodes = spec.get("env") is not None
        if max_prompt is None and max_model_len is not None and not episodes:
            max_prompt = max_model_len - max_new
            if max_prompt < 1:
                raise ValueError(f"benchmark {spec['name']}: max_new_tokens {max_new} leaves no room for the prompt "
                                 f"in max_model_len {max_model_len}")
        runner = _spec_runner(spec, rollout, tokenizer, max_model_len) if episodes else None
        try:
            metrics, records = evaluate(
                rollout, tokenizer, [rows[i] for i in indices], spec["benchmark"], samples=samples,
                temperature=temperature, top_p=float(spec.get("top_p") or 1.0), max_new_tokens=max_new,
                chat_template=spec.get("chat_template", True), system_prompt=spec.get("system_prompt"),
                max_prompt_tokens=max_prompt, runner=runner)
        finally:
            if runner is not None:
                runner.executor.close()
        if gather is not None and share is not None:
            metrics, records = _gathered(records, indices, share, gather, spec["benchmark"])
        out.update({f"bench/{spec['name']}/{k}": float(v) for k, v in metrics.items()})
        if output_dir is not None:
            from rlkit.eval.report import write_report

            settings = {"step": step, **{k: v for k, v in spec.items() if v is not None}}
            write_report(Path(output_dir) / spec["name"] / f"step_{step}", spec["benchmark"], metrics, records,
                         settings, plot=False)
    return out


def agent_config(env: str, env_kwargs: dict | None = None, max_turns: int | None = None,
                 max_episode_tokens: int | None = None):
    """The ``AgentConfig`` of an evaluation's episodes (None: ``AgentConfig``'s defaults)."""
    from rlkit.config import AgentConfig

    given = {"max_turns": max_turns, "max_episode_tokens": max_episode_tokens}
    return AgentConfig(env=env, env_kwargs=dict(env_kwargs or {}), **{k: v for k, v in given.items() if v is not None})


def _spec_runner(spec: dict, rollout, tokenizer, max_model_len: int | None):
    from rlkit.agents import build_runner

    cfg = agent_config(spec["env"], spec.get("env_kwargs"), spec.get("max_turns"), spec.get("max_episode_tokens"))
    return build_runner(cfg, rollout, tokenizer, spec.get("system_prompt"), max_model_len=max_model_len)


def _gathered(records: list[dict], indices: list[int], share: Any, gather: Any,
              benchmark: str) -> tuple[dict[str, float], list[dict]]:
    """All shares' records in the rows' order (``index`` = the row's place in the benchmark)
    and their metrics; the other ranks of a tensor-parallel engine contribute nothing (their
    engine generated the same rows)."""
    for record, index in zip(records, indices):
        record["index"] = index
    parts = gather(records if share.tp_rank == 0 else [])
    merged = sorted((r for part in parts for r in part), key=lambda r: r["index"])
    return summarize(merged, vote_equal(benchmark)), merged


class BestCheckpoint:
    """Tracks the best value of one metric, e.g. ``bench/gsm8k/accuracy`` (``mode="max"``).

    ``update(metrics, step)`` returns True when the metric is present, finite and better than
    every earlier value (the caller then saves the model as the best one); ``state_dict`` /
    ``load_state_dict`` carry it through a resume.
    """

    def __init__(self, metric: str, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"BestCheckpoint mode must be 'max' or 'min', got {mode!r}")
        self.metric, self.mode = metric, mode
        self.best: float | None = None
        self.step: int | None = None

    def update(self, metrics: dict[str, float], step: int) -> bool:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return False
        value = float(value)
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.step = value, step
        return better

    def state_dict(self) -> dict:
        return {"metric": self.metric, "mode": self.mode, "best": self.best, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if state.get("metric") == self.metric and state.get("mode") == self.mode:
            self.best, self.step = state.get("best"), state.get("step")


# ---- which model -----------------------------------------------------------------------------

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def resolve_eval_model(model: str, scratch: str | Path) -> tuple[str, str]:
    """``(model folder, description)`` for ``--model``.

    - ``embedded:NAME``: the prepared embedded model (``rlkit.models.resolve_model_path``);
    - a model folder (has ``config.json``): itself;
    - a run folder: its ``final/`` when present, else its latest complete checkpoint;
    - a checkpoint folder (``model.safetensors`` without ``config.json``): a model folder is
      assembled in ``scratch`` from the run's base model (``model.path`` in the checkpoint's
      ``config.yaml``: its config and tokenizer files) and the checkpoint's weights (linked; LoRA
      adapters are merged into the base weights).
    """
    from rlkit.checkpoint import MARKER, WEIGHTS, CheckpointError, latest_checkpoint
    from rlkit.models import EMBEDDED_PREFIX, resolve_model_path

    if model.startswith(EMBEDDED_PREFIX):
        return resolve_model_path(model), model
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"--model {model}: no such folder (give a model folder, a run folder, a checkpoint "
                                f"folder or embedded:NAME)")
    if (path / "config.json").is_file():
        return str(path), str(path)
    if (path / "final" / "config.json").is_file():
        return str(path / "final"), f"{path}/final"
    checkpoint = path if (path / WEIGHTS).is_file() else latest_checkpoint(path)
    if checkpoint is None:
        raise CheckpointError(f"--model {model}: not a model folder (no config.json), and no final/ model or "
                              f"complete checkpoint (checkpoints/step_N/{MARKER}) in it")
    return str(_assemble_checkpoint(checkpoint, Path(scratch))), str(checkpoint)


def _assemble_checkpoint(checkpoint: Path, scratch: Path) -> Path:
    import yaml

    from rlkit.checkpoint import WEIGHTS, CheckpointError
    from rlkit.models import resolve_model_path

    config_path = checkpoint / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError(f"{checkpoint}: a checkpoint without config.json needs its run's config.yaml to find "
                              f"the base model's config and tokenizer; neither is there")
    run_cfg = yaml.safe_load(config_path.read_text()) or {}
    model_cfg = run_cfg.get("model") or {}
    base_name = model_cfg.get("path")
    if not base_name:
        raise CheckpointError(f"{config_path}: no model.path (the base model whose config and tokenizer to use)")
    base = Path(resolve_model_path(str(base_name)))
    if not (base / "config.json").is_file():
        raise CheckpointError(f"{checkpoint}: its base model {base_name} (model.path in {config_path}) is not a model "
                              f"folder with config.json; evaluate the run's final/ folder instead")
    target = scratch / f"model_{checkpoint.parent.parent.name}_{checkpoint.name}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for item in base.iterdir():  # config, generation config, tokenizer files, chat template
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and not item.name.endswith(".index.json"):
            shutil.copy2(item, target / item.name)
    lora = model_cfg.get("lora") or {}
    if int(lora.get("r") or 0) > 0:
        _merge_lora(checkpoint / WEIGHTS, base, lora, target / WEIGHTS)
    else:
        (target / WEIGHTS).symlink_to((checkpoint / WEIGHTS).resolve())
    return target


def _merge_lora(weights_path: Path, base: Path, lora: dict, out: Path) -> None:
    """Load the base model, wrap it with the run's LoRA config, load the checkpoint's (PEFT-named)
    weights and write the merged plain weights."""
    from dataclasses import asdict

    from rlkit.checkpoint import CheckpointError, load_weights, save_weights
    from rlkit.config import LoraConfig
    from rlkit.backends.lora import apply_lora, merged_weights
    from rlkit.models import load_causal_lm

    cfg = SimpleNamespace(**{**asdict(LoraConfig()), **lora})
    model = apply_lora(load_causal_lm(str(base)), cfg)
    missing, unexpected = model.load_state_dict(load_weights(weights_path), strict=False)
    if unexpected or [m for m in missing if "lora_" in m]:
        raise CheckpointError(f"{weights_path}: the weights do not fit the run's LoRA config "
                              f"(unexpected {unexpected[:3]}, missing {missing[:3]})")
    save_weights(out, {name: t.detach().cpu().clone() for name, t in merged_weights(model)})
