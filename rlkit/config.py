"""Run configuration: frozen dataclasses loaded from YAML plus dotted command-line overrides.

    cfg = load_config("configs/grpo_arith.yaml", ["train.steps=50", "algo.advantage=rloo"])

A YAML file may list other YAML files under ``include:`` (paths relative to it); they are
merged first, the including file wins.  Unknown keys fail with the closest valid name.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key and, where known, the file."""


@dataclass(frozen=True)
class LoraConfig:
    """PEFT LoRA adapters on the policy (``r: 0`` = full fine-tuning); see rlkit/backends/lora.py."""
    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    bias: str = "none"                # none | all | lora_only (PEFT's choices)


@dataclass(frozen=True)
class ModelConfig:
    path: str = "embedded:smollm2-135m-instruct"  # a local directory, a hub id, or embedded:NAME
    dtype: str = "float32"            # weights in the trainer: float32 | bfloat16
    autocast_bf16: bool = True        # bf16 autocast for forward/backward (fast on AVX512-BF16 / GPUs)
    gradient_checkpointing: bool = False
    reference: str | None = None      # reference policy for KL; None = the starting policy when kl_coef > 0
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass(frozen=True)
class DataConfig:
    task: str = "arith"               # arith, sql_demo (built in) | jsonl | toolcall | spider
    path: str | None = None           # jsonl/json/parquet file or hub id (jsonl); records (toolcall, spider)
    tables: str | None = None         # spider: tables.json (schemas)
    db_dir: str | None = None         # spider: folder of <db_id>/<db_id>.sqlite databases
    sample_rows: int = 0              # spider: sample rows per table shown in the prompt
    prompt_column: str = "prompt"
    answer_column: str = "answer"
    levels: tuple[int, ...] = (1,)    # arith difficulty levels to train on
    eval_levels: tuple[int, ...] | None = None  # arith levels to evaluate on (None = levels)
    num_train: int = 20000
    num_eval: int = 200
    instruction: str = ""             # appended to every question (arith)
    system_prompt: str | None = None
    system_prompt_column: str | None = None  # a column whose value is that row's system prompt
    chat_template: bool | str = True  # True: the tokenizer's; False: raw text; a template file or text
    eval_path: str | None = None      # held-out rows from this file instead of a slice of data.path
    max_prompt_tokens: int = 256
    truncation: str = "error"         # a prompt over max_prompt_tokens: error | left (drop its start) | right (its end)


@dataclass(frozen=True)
class RolloutConfig:
    backend: str = "vllm"             # vllm (in process) | vllm_server (rlkit serve) | hf
    num_samples: int = 8              # completions per prompt (the group size K)
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1                   # -1 (or 0): off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop: list = field(default_factory=list)  # strings that end a completion
    gpu_memory_utilization: float = 0.2
    max_model_len: int = 512
    enforce_eager: bool = True
    dtype: str = "auto"               # vLLM weights dtype; auto = bfloat16 when the device supports it
    tensor_parallel_size: int = 1     # vLLM tensor parallelism over that many consecutive ranks (colocated)
    sleep: bool = False               # CUDA: the engine frees its GPU memory while the trainer trains
    mode: str = "sync"                # sync | one_step_off | async: generation ahead of training (async_rollout.py)
    max_staleness: int = 1            # async: rounds made ahead; older samples (policy versions) are dropped
    weight_update: str = "finish"     # with requests in flight: finish (on the old weights) | pause (vllm_server)
    # vllm_server: a server started with `rlkit serve` (rlkit/rollout/vllm_server.py); "auto": the
    # run starts one for its policy and stops it at the end (rlkit/rollout/managed_server.py)
    server_url: str = "http://127.0.0.1:8000"
    server_cpus: list = field(default_factory=list)  # auto: CPU ids the started server is pinned to
    server_timeout_s: float = 300.0   # per request and per weight broadcast; then RolloutServerError
    server_workers: int = 1           # the server's worker processes (its tensor x data parallel size)
    weight_transfer: str = "auto"     # auto (nccl on CUDA, gloo elsewhere) | nccl | gloo
    weight_transfer_port: int = 0     # port rank 0 opens for the transfer group (0: a free one)
    weight_bucket_mb: float = 64.0    # gloo: tensors packed per broadcast (MiB)


@dataclass(frozen=True)
class AlgoConfig:
    advantage: str = "grpo"           # registered estimator name (grpo, dr_grpo, rloo, ...)
    advantage_kwargs: dict = field(default_factory=dict)  # extra keyword arguments of the estimator
    loss: str = "ppo_clip"            # registered policy loss
    loss_agg: str = "seq_mean_token_mean"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_mode: str = "loss"             # loss (beta * mean KL in the loss) | reward (subtracted from scores)
    entropy_coef: float = 0.0
    # rollout correction for engine-vs-trainer log-prob differences (algorithms/losses.py)
    rollout_correction: str = "none"  # none | token_tis | seq_tis | seq_mask
    rollout_is_cap: float = 2.0       # token_tis / seq_tis: weights capped here
    rollout_mask_band: tuple[float, float] = (0.5, 2.0)  # seq_mask: keep sequences with ratio inside
    overlong_buffer: float = 0.0      # DAPO soft overlong penalty over the last N tokens (< 1: share of max_new_tokens)
    overlong_factor: float = 1.0      # penalty at max_new_tokens (rewards/shaping.py)
    dynamic_sampling: bool = False    # DAPO: drop groups with equal scores, draw more prompts (rlkit/sampling.py)
    max_sampling_rounds: int = 4      # rounds of prompts_per_step prompts at most per step
    accuracy_band: list | None = None  # PRIME: keep groups whose mean accuracy is in [low, high], draw more
    epochs: int = 1                   # passes over each rollout batch
    mini_batches: int = 1             # optimizer steps per epoch


@dataclass(frozen=True)
class CriticConfig:
    """The value model, trained when the advantage estimator reads values (``gae``: PPO)."""
    path: str | None = None           # initial weights (a causal LM); None = the policy's model.path
    lr: float = 1.0e-5
    value_clip: float | None = 0.5    # |V - V_old| beyond this is clipped in the value loss (None: off)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 50
    prompts_per_step: int = 8
    micro_batch_size: int = 16        # sequences per forward/backward
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"     # constant | cosine | linear
    seed: int = 0
    output_dir: str = "runs/latest"
    skip_zero_advantage: bool = True  # rows with all-zero advantages add no gradient: skip their backward
    share_prompt_prefix: bool = True  # run each distinct prompt once per micro-batch (rlkit/backends/prefix.py)
    save_final: bool = True           # export the final policy in Hugging Face format to <output_dir>/final
    save_every: int = 0               # checkpoint every N steps (0: only at the last step); rlkit/checkpoint.py
    keep_checkpoints: int = 2         # newest checkpoints kept (0 = all)
    resume: str = "never"             # never | auto (latest checkpoint in output_dir, if any) | a checkpoint path
    threads: int | None = None        # torch CPU threads (None = torch default)


@dataclass(frozen=True)
class BackendConfig:
    name: str = "single"              # single | deepspeed
    device: str = "auto"              # auto | cpu | cuda (single); deepspeed picks its rank's device
    zero_stage: int = 2               # deepspeed: ZeRO stage 2 or 3
    offload_optimizer: bool = False   # deepspeed: optimizer states in CPU memory
    offload_params: bool = False      # deepspeed ZeRO-3: parameters in CPU memory


@dataclass(frozen=True)
class RewardSpec:
    fn: str = "rewards.math:correctness"  # "module:attribute"
    name: str | None = None
    weight: float = 1.0
    pool: bool = False                # score each row in a worker process, killed at its time limit
    kwargs: dict = field(default_factory=dict)
    # A reward that returns RewardOutput(steps=...) without token rewards: the credit assignment
    # of its step values (rlkit/algorithms/credit.py: sum | min_form | clip | delta | clip_delta)
    # before they sit on each step's last token, and its arguments (min_form, temperature, eta).
    step_credit: str = "sum"
    step_credit_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RewardsConfig:
    functions: tuple[RewardSpec, ...] = (RewardSpec(),)
    fail_fast: bool = False
    # Seconds per row, for every reward call: a pool row's limit; an in-process call on n rows may
    # take n x timeout_s (+60 s on a component's first call). The rows of a call past it are unscored.
    timeout_s: float = 10.0
    num_workers: int = 2              # worker processes of the pool: true components
    accuracy_component: str | None = "correctness"  # component reported as accuracy


@dataclass(frozen=True)
class EvalConfig:
    every: int = 0                    # evaluate every N steps (0 = only before and after)
    before: bool = True
    after: bool = True
    max_new_tokens: int = 48
    benchmarks: list = field(default_factory=list)  # specs for rlkit.eval.runner.evaluate_benchmarks
    best_metric: str | None = None    # keep <output_dir>/best by this metric (eval/accuracy, bench/<name>/...)
    best_mode: str = "max"            # max | min


@dataclass(frozen=True)
class AgentConfig:
    env: str | None = None            # multi-turn episodes: calculator | sql | plain | "module:Class" (None: single-turn)
    env_kwargs: dict = field(default_factory=dict)  # keyword arguments of the environment's __init__
    max_turns: int = 4                # model turns per episode at most
    max_episode_tokens: int = 256     # model + environment tokens after the prompt at most
    tool_timeout_s: float = 5.0       # per tool call; the worker is killed past it
    tool_workers: int = 2             # worker processes running tool calls
    max_observation_chars: int = 2000  # a tool result longer than this is cut
    turn_credit: str = "sum"          # credit of turn rewards: sum | min_form | clip | delta | clip_delta
    turn_credit_kwargs: dict = field(default_factory=dict)
    turn_reward_weight: float = 1.0


@dataclass(frozen=True)
class LogConfig:
    progress: bool = True
    console_every: int = 1
    report_to: list = field(default_factory=list)  # tensorboard | wandb | mlflow (rlkit/tracking.py)
    project: str = "rlkit"            # the W&B project / MLflow experiment
    run_name: str | None = None       # None: the run folder's name


@dataclass(frozen=True)
class MonitorConfig:  # reward-hacking monitors logged as monitor/... (rlkit/monitors.py)
    answer_fn: str = "rlkit.monitors:final_answer"  # "module:function", completion -> final answer (collapse)
    format_component: str | None = None  # reward component of monitor/format_only; None: one named "format", if any


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    log: LogConfig = field(default_factory=LogConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


# ---------------------------------------------------------------- loading

def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read YAML (with ``include:``), apply ``a.b=value`` overrides, build and check a Config."""
    raw: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    source = str(path) if path else "<defaults>"
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        _set_dotted(raw, key.strip().split("."), yaml.safe_load(value) if value.strip() else None)
    cfg = _build(Config, raw, prefix="", source=source)
    check_config(cfg)
    return cfg


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: include cycle")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    merged: dict[str, Any] = {}
    includes = data.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: include must be a file name or a list of file names, got {includes!r}")
    for inc in includes:
        _deep_merge(merged, _read_yaml(path.parent / inc, seen + (path.resolve(),)))
    _deep_merge(merged, data)
    return merged


def _deep_merge(base: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = v


def _set_dotted(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for k in keys[:-1]:
        if node.get(k) is None:  # absent, or an empty section in the YAML
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {k} is not a section")
    node[keys[-1]] = value


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"{source}: unknown config key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}", source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner[:-1]:  # bool | str: the first plain member the value already is
            if a in (bool, int, float, str) and isinstance(value, a) and not (a is int and isinstance(value, bool)):
                return value
        return _coerce(inner[-1], value, key, source)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        item_tp = args[0] if args else Any
        if len(args) == 2 and args[1] is Ellipsis or len(args) == 1:
            return tuple(_coerce(item_tp, v, f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{source}: {key} needs {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-5" as text
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool, float):
        if tp is int and isinstance(value, bool) or not isinstance(value, tp):
            raise ConfigError(f"{source}: {key} must be {tp.__name__}, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return {k: _yaml11_number(v) for k, v in value.items()}
    return value


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _yaml11_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as text; inside free-form mappings (kwargs) that text
    would reach a function as a string, so it becomes the float it spells."""
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def check_config(cfg: Config) -> None:
    """Cross-field checks that a type alone cannot express."""
    def bad(key: str, msg: str) -> None:
        raise ConfigError(f"{key}: {msg}")

    from rlkit.backends import TRAIN_BACKENDS
    from rlkit.rollout import ROLLOUT_BACKENDS

    if cfg.rollout.backend not in ROLLOUT_BACKENDS:
        bad("rollout.backend", f"unknown backend {cfg.rollout.backend!r}; choose {ROLLOUT_BACKENDS.choices()}")
    from rlkit.config_checks import check_rollout

    check_rollout(cfg, bad)
    from rlkit.sampling_checks import check_sampling

    check_sampling(cfg, bad)
    if cfg.backend.name not in TRAIN_BACKENDS:
        bad("backend.name", f"unknown training backend {cfg.backend.name!r}; choose {TRAIN_BACKENDS.choices()}")
    if cfg.backend.zero_stage not in (2, 3):
        bad("backend.zero_stage", "choose 2 or 3")
    if cfg.model.lora.r < 0 or (cfg.model.lora.r and not cfg.model.lora.target_modules):
        bad("model.lora", "r must be >= 0, and a LoRA run needs target_modules")
    if cfg.model.lora.bias not in ("none", "all", "lora_only"):
        bad("model.lora.bias", "choose none, all or lora_only")
    if cfg.rollout.tensor_parallel_size < 1:
        bad("rollout.tensor_parallel_size", "must be >= 1")
    if cfg.rollout.num_samples < 1:
        bad("rollout.num_samples", "must be >= 1")
    if cfg.rollout.max_new_tokens < 1 or cfg.eval.max_new_tokens < 1:
        bad("rollout.max_new_tokens", "rollout.max_new_tokens and eval.max_new_tokens must be >= 1")
    from rlkit.config_checks import check_algo

    check_algo(cfg.algo, bad)
    if cfg.train.prompts_per_step < 1 or cfg.train.micro_batch_size < 1:
        bad("train", "prompts_per_step and micro_batch_size must be >= 1")
    if cfg.algo.epochs < 1 or cfg.algo.mini_batches < 1:
        bad("algo", "epochs and mini_batches must be >= 1")
    if cfg.algo.max_sampling_rounds < 1:
        bad("algo.max_sampling_rounds", "must be >= 1")
    band = cfg.algo.accuracy_band
    if band is not None:
        if not (isinstance(band, (list, tuple)) and len(band) == 2
                and all(isinstance(v, (int, float)) for v in band) and 0 <= band[0] <= band[1] <= 1):
            bad("algo.accuracy_band", f"must be [low, high] with 0 <= low <= high <= 1, got {band!r}")
        if not cfg.rewards.accuracy_component:
            bad("algo.accuracy_band", "needs rewards.accuracy_component (the component the band applies to)")
    if not 0 <= overlong_tokens(cfg.algo, cfg.rollout.max_new_tokens) <= cfg.rollout.max_new_tokens:
        bad("algo.overlong_buffer", "must be >= 0 and at most rollout.max_new_tokens tokens")
    batch = cfg.train.prompts_per_step * cfg.rollout.num_samples
    if batch % cfg.algo.mini_batches:
        bad("algo.mini_batches", f"must divide the rollout batch of {batch} sequences")
    if cfg.eval.best_mode not in ("max", "min"):
        bad("eval.best_mode", "choose max or min")
    if cfg.eval.benchmarks:
        from rlkit.config_checks import environment_problem
        from rlkit.eval.specs import check_specs

        try:
            check_specs(cfg.eval.benchmarks, check_env=environment_problem)
        except ValueError as exc:
            bad("eval.benchmarks", str(exc))
    if cfg.model.dtype not in ("float32", "bfloat16"):
        bad("model.dtype", "choose float32 or bfloat16")
    if cfg.train.lr_schedule not in ("constant", "cosine", "linear"):
        bad("train.lr_schedule", "choose constant, cosine or linear")
    if cfg.train.save_every < 0 or cfg.train.keep_checkpoints < 0:
        bad("train", "save_every and keep_checkpoints must be >= 0")
    if not cfg.train.resume.strip():
        bad("train.resume", "choose never, auto or the path of a checkpoint (or run) folder")
    if cfg.train.resume.lower() in ("never", "auto") and cfg.train.resume not in ("never", "auto"):
        bad("train.resume", f"write {cfg.train.resume.lower()!r} in lower case")
    if not cfg.rewards.functions:
        bad("rewards.functions", "needs at least one reward function")
    if not 0 < cfg.rewards.timeout_s < float("inf"):
        bad("rewards.timeout_s", f"must be a positive, finite number of seconds, got {cfg.rewards.timeout_s}")
    if cfg.backend.name == "deepspeed" and cfg.backend.zero_stage == 3 and cfg.rollout.backend == "hf":
        bad("rollout.backend", "hf cannot generate from ZeRO-3 shards (ranks would wait on each other's "
            "generation steps); use rollout.backend=vllm or backend.zero_stage=2")
    from rlkit.config_checks import check_agent, check_callables, check_launch

    from rlkit.data_checks import check_data

    check_data(cfg, bad)
    from rlkit.tracking import check_report_to

    check_report_to(cfg, bad)
    check_callables(cfg, bad)
    check_agent(cfg, bad)
    check_launch(cfg, bad, os.environ)


def overlong_tokens(algo: AlgoConfig, max_new_tokens: int) -> int:
    """``algo.overlong_buffer`` in tokens (a value below 1 is a share of ``max_new_tokens``)."""
    buffer = algo.overlong_buffer
    return round(buffer * max_new_tokens) if 0 < buffer < 1 else int(buffer)


def config_to_dict(cfg: Any) -> Any:
    """Plain dict/list form (tuples as lists) for saving as YAML."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


# Keys whose values are credentials (a judge's api_key, an hf_token, a password): never written or
# printed.  Pass them through the environment instead (the judge reads ``api_key_env``).
SECRET_KEY = re.compile(r"(^|[_-])(api[_-]?key|key|token|secret|password|passwd|credentials?)$", re.IGNORECASE)
REDACTED = "<redacted>"


def redacted(value: Any) -> Any:
    """``value`` (a ``config_to_dict`` tree) with every secret-named key's value replaced."""
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and SECRET_KEY.search(k) and v not in (None, "")
                else redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def save_config(cfg: Config, path: str | Path) -> None:
    """The resolved config as YAML, secrets redacted."""
    Path(path).write_text(yaml.safe_dump(redacted(config_to_dict(cfg)), sort_keys=False))
