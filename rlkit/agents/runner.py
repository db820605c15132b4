"""Multi-turn rollouts: every episode of a step advances turn by turn, one batched generation
call per turn, token in and token out.

An episode's ids are the prompt, then for each turn the model's tokens exactly as sampled
(``model_mask`` True, with their engine log-probs) and the environment's tokens
(``model_mask`` False, log-prob 0): the end of the assistant message when the model did not
sample it, the observation messages and the next assistant header, tokenized alone
(rlkit/agents/render.py).  The next turn's input is these ids: nothing sampled is ever decoded
and tokenized again.

A turn ends on EOS, on ``</tool_call>`` (a stop string, kept), or at ``rollout.max_new_tokens``.
An episode ends when the environment says done, after ``agent.max_turns`` turns, or when its
ids after the prompt would pass ``agent.max_episode_tokens`` (then it is ``truncated``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from rlkit.agents.env import Turn, check_messages, check_step, final_text
from rlkit.agents.tools import CALL_END, parse_tool_calls

logger = logging.getLogger("rlkit")


@dataclass
class Episode:
    prompt_index: int
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)     # everything after the prompt
    model_mask: list[bool] = field(default_factory=list)   # True where the model sampled the token
    logprobs: list[float] = field(default_factory=list)    # engine log-probs (0.0 on environment tokens)
    turns: list[Turn] = field(default_factory=list)
    turn_ends: list[int] = field(default_factory=list)     # per turn: its end in model-token coordinates
    turn_rewards: list[float | None] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)     # the conversation, for rewards and logs
    done: bool = False
    truncated: bool = False
    env_error: str | None = None
    env: object = None

    @property
    def text(self) -> str:
        return final_text([t.text for t in self.turns])

    @property
    def model_token_ids(self) -> list[int]:
        return [t for t, m in zip(self.token_ids, self.model_mask) if m]

    @property
    def tool_calls(self) -> int:
        return sum(len(t.tool_calls) for t in self.turns)

    @property
    def tool_errors(self) -> int:
        return sum(not r.ok for t in self.turns for r in t.tool_results)

    def turn_steps(self) -> list[tuple[int, int, float]] | None:
        """Turn rewards as ``(start, end, value)`` spans over the model tokens (None: no turn rewards)."""
        steps, start = [], 0
        for end, reward in zip(self.turn_ends, self.turn_rewards):
            if reward is not None and end > start:
                steps.append((start, end, float(reward)))
            start = end
        return steps or None


class EpisodeRunner:
    """Runs episodes of ``env_factory()`` environments on a rollout backend."""

    def __init__(self, backend, env_factory, renderer, executor, tokenizer, max_turns: int,
                 max_episode_tokens: int, max_model_len: int | None = None, max_prompt_tokens: int | None = None):
        if max_turns < 1:
            raise ValueError(f"agent.max_turns must be >= 1, got {max_turns}")
        self.backend, self.env_factory, self.renderer, self.executor = backend, env_factory, renderer, executor
        self.tokenizer, self.max_turns, self.max_episode_tokens = tokenizer, max_turns, max_episode_tokens
        self.max_model_len, self.max_prompt_tokens = max_model_len, max_prompt_tokens
        self.schemas = [t.schema for t in executor.tools.values()]
        eos = tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos])

    def run(self, rows: list[dict], sampling) -> list[Episode]:
        """``sampling.n`` episodes per row, grouped like ``RolloutBackend.generate``."""
        episodes, prompts = [], {}
        for i, row in enumerate(rows):
            for _ in range(sampling.n):  # each episode has its own environment state
                env, first, ids = self.start(row, prompts)
                episodes.append(Episode(prompt_index=i, prompt_ids=ids, env=env, messages=[dict(m) for m in first]))
        turn_sampling = replace(sampling, n=1, stop=tuple(dict.fromkeys((*sampling.stop, CALL_END))))
        live = list(episodes)
        for turn_index in range(self.max_turns):
            for e in live:
                if self._budget(e) <= 0:
                    e.truncated = e.done = True
            live = [e for e in live if not e.done]
            if not live:
                break
            budgets = [min(sampling.max_new_tokens, self._budget(e)) for e in live]
            gens = self._generate(live, turn_sampling, budgets)
            for episode, gen in zip(live, gens):
                self._advance(episode, gen, turn_index)
            live = [e for e in live if not e.done]
        for episode in live:  # max_turns reached while the environment still waited for a turn
            episode.truncated = episode.done = True
        for episode in episodes:
            episode.env = None
        return episodes

    def start(self, row: dict, cache: dict | None = None) -> tuple[object, list[dict], list[int]]:
        """A fresh environment reset to ``row``, its first messages and their prompt ids (tool
        schemas included); ``cache`` maps first messages already rendered to their ids."""
        env = self.env_factory()
        first = check_messages(env.reset(row), f"{type(env).__name__}.reset")
        cache = {} if cache is None else cache
        key = repr(first)
        if key not in cache:
            cache[key] = self.renderer.prompt_ids(first, self.schemas)
            self._check_prompt(cache[key], row)
        return env, first, cache[key]

    def _generate(self, live: list[Episode], sampling, budgets: list[int]):
        """One generation call for every live episode, at the largest budget; a completion that
        ran past its episode's budget is cut there (and counts as cut at its token limit)."""
        gens = self.backend.generate([e.prompt_ids + e.token_ids for e in live],
                                     replace(sampling, max_new_tokens=max(budgets)))
        for gen, budget in zip(gens, budgets):
            if len(gen.token_ids) > budget:
                gen.token_ids = gen.token_ids[:budget]
                gen.logprobs = gen.logprobs[:budget] if gen.logprobs is not None else None
                gen.finished, gen.stop_reason = False, None
        return gens

    def _check_prompt(self, ids: list[int], row: dict) -> None:
        if self.max_prompt_tokens and len(ids) > self.max_prompt_tokens:
            from rlkit.records import DataError

            preview = str(row.get("prompt"))[:60].replace("\n", " ")
            raise DataError(f"an episode's first prompt (with the tool descriptions) has {len(ids)} tokens, over "
                            f"data.max_prompt_tokens={self.max_prompt_tokens} ({preview!r}...); raise "
                            "data.max_prompt_tokens")

    def _budget(self, e: Episode) -> int:
        left = self.max_episode_tokens - len(e.token_ids)
        if self.max_model_len:
            left = min(left, self.max_model_len - len(e.prompt_ids) - len(e.token_ids))
        return left

    def _advance(self, e: Episode, gen, turn_index: int) -> None:
        ids = list(gen.token_ids)
        lps = list(gen.logprobs) if gen.logprobs is not None else [0.0] * len(ids)
        sampled_eos = bool(ids) and ids[-1] in self.eos
        stop = "tool_call" if gen.stop_reason == CALL_END else "eos" if gen.finished else "length"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        turn = Turn(index=turn_index, text=text, stop=stop, tool_calls=parse_tool_calls(text))
        e.token_ids += ids
        e.model_mask += [True] * len(ids)
        e.logprobs += lps[: len(ids)]
        e.turns.append(turn)
        e.turn_ends.append(sum(e.model_mask))
        e.messages.append({"role": "assistant", "content": text})
        if turn.tool_calls:
            turn.tool_results = self.executor.run(turn.tool_calls, e.env.tool_kwargs())
        where = f"{type(e.env).__name__}.step"
        try:
            step = e.env.step(turn)
        except Exception as exc:  # noqa: BLE001 - one episode's environment failing must not stop the run
            logger.warning("environment %s failed on an episode (it ends there): %s: %s", where,
                           type(exc).__name__, exc)
            e.env_error, e.done = f"{type(exc).__name__}: {exc}", True
            e.turn_rewards.append(None)
            return
        step = check_step(step, where)
        e.turn_rewards.append(None if step.reward is None else float(step.reward))
        if step.done:
            e.done = True
            return
        obs = self.renderer.observation_ids(step.messages, sampled_eos)
        if len(obs) >= self._budget(e):  # no room for the observation and a token of the next turn
            e.truncated = e.done = True
            return
        e.messages.extend(dict(m) for m in step.messages)
        e.token_ids += obs
        e.model_mask += [False] * len(obs)
        e.logprobs += [0.0] * len(obs)
