"""What a training run is made of, built once: ``Run.build(cfg)``.

The trainer's loop (rlkit/trainer.py) reads as the stages of a step; this module holds the
parts those stages use (backends, rollout engine, reward, producer, estimator, logger) and the
stages that are not the step's own arithmetic: evaluation, keeping the best policy, checkpoints,
the final export, closing down.  No stage asks whether the run is distributed: the backends'
collectives are identities in one process.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlkit.agents import build_runner
from rlkit.algorithms.advantages import get_advantage
from rlkit.async_rollout import AheadProducer, Serialized
from rlkit.backends import make_backend
from rlkit.backends.sharding import RankShare
from rlkit.checkpoint import read_extra, resume, save_checkpoint, should_save, start_point
from rlkit.config import Config, ConfigError, config_to_dict, redacted, save_config
from rlkit.critic import critic_config
from rlkit.data import PromptSampler, load_rows, tokenize_prompts, use_chat_template
from rlkit.eval.heldout import heldout_records, summarize_heldout
from rlkit.eval.runner import BestCheckpoint, evaluate_benchmarks
from rlkit.interrupts import Preemption
from rlkit.logging import MetricsLogger
from rlkit.models import load_tokenizer
from rlkit.monitors import Monitor
from rlkit.tracking import make_sinks
from rlkit.producer import RolloutProducer
from rlkit.rollout import make_rollout
from rlkit.reward_api import RewardContext
from rlkit.scoring import build_reward


@dataclass
class Run:
    cfg: Config
    backend: Any                     # the policy's training backend (rlkit/backends)
    critic: Any                      # the critic's backend when the estimator reads values, else None
    critic_cfg: Config
    rollout: Any                     # the rollout engine (rlkit/rollout)
    reward: Any                      # rewards.CombinedReward
    reward_context: RewardContext    # what stateful rewards see of the run; its step follows the loop
    producer: RolloutProducer
    sampler: PromptSampler
    estimator: Any
    tokenizer: Any
    share: RankShare
    eval_rows: list
    run_dir: Path
    checkpoint: Path | None          # the checkpoint a resumed run starts from
    start: int                       # the last step done before this process started
    logger: MetricsLogger | None     # the main rank's
    best: BestCheckpoint | None
    summary: dict = field(default_factory=dict)
    monitor: Monitor = field(default_factory=Monitor)  # monitor/... metrics; the previous step's answer
    ahead: AheadProducer | None = None   # rollout.mode one_step_off / async: the producer thread
    server: Any = None                   # rollout.server_url=auto: the server this run started
    preemption: Preemption = field(default_factory=Preemption)  # SIGTERM: stop at a step boundary

    @classmethod
    def build(cls, cfg: Config) -> "Run":
        run_dir = Path(cfg.train.output_dir)
        # (None, 0) for a fresh run; checked before anything is written.  RANK is set by the launcher.
        checkpoint, start = start_point(cfg, is_main=int(os.environ.get("RANK", "0")) == 0)
        optimizer_steps = cfg.train.steps * cfg.algo.epochs * cfg.algo.mini_batches
        backend = make_backend(cfg, optimizer_steps)
        server = cfg.rollout.backend == "vllm_server"  # tensor parallelism is then the server's business
        share = RankShare(backend.rank, backend.world_size, 1 if server else cfg.rollout.tensor_parallel_size)
        share.check(cfg.train.prompts_per_step)
        if backend.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        backend.barrier()
        random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed + backend.rank)  # hf sampling differs between ranks
        tokenizer = load_tokenizer(backend.model_path)
        use_chat_template(tokenizer, cfg.data)  # data.chat_template: prompts, episodes, the export
        train_rows, eval_rows = load_rows(cfg.data, cfg.train.seed)
        if cfg.data.truncation == "error":  # a prompt over the limit fails now, not at the step that draws it
            tokenize_prompts(train_rows + eval_rows, tokenizer, cfg.data)
        sampler = PromptSampler(train_rows, cfg.train.seed)  # the same draws on every rank
        reward = build_reward(cfg.rewards, cfg.agent)
        reward_context = RewardContext.for_run(cfg, backend)
        reward.attach(reward_context)  # stateful rewards build on the run (rlkit/reward_api.py)
        cfg, server = _start_server(cfg, backend, run_dir)
        # A resumed engine does not replay step 0's seed; each data-parallel group samples its own.
        rollout = make_rollout(cfg.rollout.backend, backend.model, tokenizer, backend.model_path, cfg.rollout,
                               seed=cfg.train.seed + start + 1_000_003 * share.dp_rank,
                               world_size=backend.world_size, rank=backend.rank, collectives=backend)
        estimator = get_advantage(cfg.algo.advantage)
        reads = getattr(estimator, "inputs", ())
        critic_cfg = critic_config(cfg)  # PPO: an estimator that reads values gets a critic of its own
        critic = make_backend(critic_cfg, optimizer_steps, role="critic") if "values" in reads else None
        runner = None
        if cfg.agent.env is not None:  # multi-turn episodes with tools (rlkit/agents)
            runner = build_runner(cfg.agent, rollout, tokenizer, cfg.data.system_prompt,
                                  max_model_len=None if cfg.rollout.backend == "hf" else cfg.rollout.max_model_len,
                                  max_prompt_tokens=cfg.data.max_prompt_tokens)
        ahead = None
        if cfg.rollout.mode != "sync":  # two threads share the engine and the reward: one call at a time
            engine_calls = ("generate", "update_weights") if cfg.rollout.weight_update == "finish" else ()
            rollout = Serialized(rollout, threading.Lock(), engine_calls + ("close",))
            reward = Serialized(reward, threading.RLock(), ("score", "update", "state_dict", "load_state_dict",
                                                            "save_state", "load_state"))
            if runner is not None:  # its tool workers serve one thread's episodes at a time
                runner.backend = rollout
                runner = Serialized(runner, threading.Lock(), ("run",))
        producer = RolloutProducer(cfg, sampler, rollout, reward, tokenizer, share, backend,
                                   token_rewards_read="token_rewards" in reads, runner=runner)
        if cfg.rollout.mode != "sync":
            ahead = AheadProducer(producer.make_round, sampler, backend, cfg.train.prompts_per_step,
                                  capacity=cfg.rollout.max_staleness, max_staleness=cfg.rollout.max_staleness)
        logger = None
        if backend.is_main:  # metrics.jsonl, the console and log.report_to's trackers (rlkit/tracking.py)
            try:  # a tracker that cannot start (W&B without a login, a bad MLflow URI): exit code 2
                sinks = make_sinks(cfg, run_dir, resume_step=start if checkpoint is not None else None)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
            logger = MetricsLogger(run_dir, cfg.train.steps, cfg.log.progress, cfg.log.console_every,
                                   append=checkpoint is not None, start_step=start, sinks=sinks)
            logger.log_config(redacted(config_to_dict(cfg)))
        best = BestCheckpoint(cfg.eval.best_metric, cfg.eval.best_mode) if cfg.eval.best_metric else None
        return cls(cfg, backend, critic, critic_cfg, rollout, reward, reward_context, producer, sampler, estimator,
                   tokenizer, share, eval_rows, run_dir, checkpoint, start, logger, best,
                   monitor=Monitor.from_config(cfg), ahead=ahead, server=server)

    def begin(self) -> None:
        """Load a checkpoint (weights, optimizer, data position, reward state, RNGs, pushed into the
        rollout engine; the monitors' previous answer), or push the trainer's weights into a server
        that may hold others.  From here SIGTERM asks the loop to stop at the next step boundary."""
        self.preemption.install()
        if self.checkpoint:
            self.summary.update(resume(self.checkpoint, self.cfg, self.backend, self.sampler, self.reward,
                                       self.rollout, self.logger, self.critic))
            self.monitor.load_state_dict(read_extra(self.checkpoint).get("monitor", {}))
            if self.best is not None:
                self.best.load_state_dict(self.summary.get("best", {}))
        elif self.cfg.rollout.backend == "vllm_server":
            self.rollout.update_weights(self.backend.named_parameters())

    def push_weights(self) -> None:
        """The trainer's weights into the engine; later rounds made ahead carry the new version."""
        self.rollout.wake()
        self.rollout.update_weights(self.backend.sync_weights())
        if self.ahead is not None:
            self.ahead.weights_pushed()

    def record_draws(self, step: int, produced) -> None:
        """One line of ``ledger.jsonl``: the draw indices the step consumed (trained on, or left
        out by a filter) and those dropped as too stale; a resumed run first writes the step it
        resumed after (lines after that step from before the resume are superseded)."""
        if not self.backend.is_main:
            return
        lines = [] if step != self.start + 1 or not self.start else [{"resume": self.start}]
        lines.append({"step": step, "consumed": produced.draws, "dropped_stale": produced.dropped_stale})
        with open(self.run_dir / "ledger.jsonl", "a") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))

    def log(self, step: int, metrics: dict, kind: str = "train") -> None:
        if self.logger is not None:
            self.logger.log(step, metrics, kind=kind)
        if kind == "train":
            self.summary["last_train"] = metrics

    def evaluate(self, step: int) -> None:
        """Held-out metrics (``eval/...``, with the training rewards) and ``eval.benchmarks``
        (``bench/<name>/...``): each engine generates its share of the rows, the records are
        gathered in row order; then ``best/`` is kept up to date."""
        cfg, backend, share = self.cfg, self.backend, self.share
        mine = [self.eval_rows[i] for i in share.generation_indices(len(self.eval_rows))]
        records = heldout_records(self.rollout, self.tokenizer, mine, self.reward, cfg.data, cfg.eval.max_new_tokens,
                                  cfg.rewards.accuracy_component, runner=self.producer.runner,
                                  repetition_penalty=cfg.rollout.repetition_penalty, stop=tuple(cfg.rollout.stop))
        gathered = backend.all_gather_object(records if share.tp_rank == 0 else [])
        metrics: dict = {}
        if backend.is_main:
            records = [r for part in gathered for r in part]
            metrics = summarize_heldout(records)
            (self.run_dir / f"eval_step{step}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            if self.logger is not None:
                self.logger.log_table("eval", records, step)
            self.summary["eval_before" if step == 0 else "eval_after"] = metrics
        if cfg.eval.benchmarks:
            bench = evaluate_benchmarks(self.rollout, self.tokenizer, cfg.eval.benchmarks, step,
                                        output_dir=self.run_dir / "bench" if backend.is_main else None,
                                        max_model_len=cfg.rollout.max_model_len, share=share,
                                        gather=backend.all_gather_object)
            metrics.update(bench if backend.is_main else {})
        self.log(step, metrics, kind="eval")
        if self.best is not None and step > 0:
            self._keep_best(step, metrics)

    def _keep_best(self, step: int, metrics: dict) -> None:
        """Save the policy to ``<output_dir>/best`` when ``eval.best_metric`` improved (decided on
        the main rank; every rank joins the save, which gathers ZeRO-3 shards)."""
        improved = self.backend.broadcast_object(self.best.update(metrics, step) if self.backend.is_main else False)
        if improved:  # best.json goes into the same atomic export as the weights
            self.backend.save_pretrained(str(self.run_dir / "best"), self.tokenizer,
                                         extra_files={"best.json": json.dumps(self.best.state_dict(), indent=2)})
        self.summary["best"] = self.best.state_dict()

    def after_step(self, step: int) -> None:
        """Checkpoint and evaluate when the config says so."""
        cfg = self.cfg
        if should_save(cfg, step):
            self._save(step)
        if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
            self.evaluate(step)

    def _save(self, step: int) -> None:
        # Generating ahead, the data position saved is the first prompt not yet taken: the
        # prompts in flight are drawn again after a resume (rlkit/async_rollout.py).
        position = self.ahead if self.ahead is not None else self.sampler
        in_flight = self.ahead.in_flight() if self.ahead is not None else []
        save_checkpoint(self.run_dir, step, self.backend, position, self.reward, self.cfg,
                        extra={"summary": self.summary, "monitor": self.monitor.state_dict(),
                               "in_flight": in_flight}, critic=self.critic)

    def finish(self, last: int) -> None:
        """The last evaluation, the exported policy (``final/``) and ``summary.json``; a run stopped
        by SIGTERM after step ``last`` < ``train.steps`` saves a checkpoint there instead (unless the
        step saved one) and skips the final evaluation and export."""
        cfg = self.cfg
        self.summary.pop("preempted_at", None)  # carried over from a checkpoint of a preempted run
        if last < cfg.train.steps:
            if not should_save(cfg, last):
                self._save(last)
            self.summary["preempted_at"] = last
            if self.logger is not None:
                self.logger.message(f"rlkit: SIGTERM: stopped after step {last}; checkpoint "
                                    f"{self.run_dir / 'checkpoints' / f'step_{last}'}; resume with train.resume=auto")
        elif self.cfg.eval.after:
            self.evaluate(self.cfg.train.steps)
        if self.cfg.train.save_final and last == cfg.train.steps:
            self.backend.save_pretrained(str(self.run_dir / "final"), self.tokenizer)
        if self.backend.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(self.summary, indent=2))

    def close(self) -> None:
        self.preemption.restore()
        if self.ahead is not None:  # its generation in flight ends before the engine closes
            self.ahead.close(self.cfg.rollout.server_timeout_s)
        if self.logger is not None:
            self.logger.close()
        self.reward.close()
        if self.producer.runner is not None:
            self.producer.runner.executor.close()
        try:
            self.rollout.close()  # before the backend: vLLM's shutdown leaves the process group too
        finally:
            if self.server is not None:
                self.server.stop()
        self.backend.close()


def _start_server(cfg: Config, backend, run_dir: Path) -> tuple[Config, Any]:
    """``rollout.server_url=auto``: the main rank starts a vLLM server for the policy
    (rlkit/rollout/managed_server.py) and every rank gets its URL; else ``(cfg, None)``."""
    if cfg.rollout.backend != "vllm_server" or cfg.rollout.server_url != "auto":
        return cfg, None
    server = None
    if backend.is_main:
        from rlkit.rollout.managed_server import ManagedServer

        server = ManagedServer.start(backend.model_path, cfg.rollout, run_dir / "server.log")
    url = backend.broadcast_object(server.url if server is not None else None)
    return dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, server_url=url)), server
