"""Tools, environments and a scripted policy for the agent tests (module level: tool workers
import this module by name)."""
from __future__ import annotations

import os
import time

from rlkit.agents import Environment, Step
from rlkit.rollout import Generation

CALLS_FILE = "RLKIT_TEST_TOOL_TOUCHED"


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    os.environ[CALLS_FILE] = "yes"  # in the worker only: must not reach the trainer's process
    return a + b


def boom(x: int) -> str:
    """Always raises.

    Args:
        x: Anything.
    """
    raise RuntimeError(f"tool exploded on {x}")


def hang(x: int) -> str:
    """Never returns in time.

    Args:
        x: Anything.
    """
    time.sleep(60)
    return "late"


def huge(x: int) -> str:
    """Returns ten megabytes.

    Args:
        x: Anything.
    """
    return "y" * (10 * 2 ** 20)


def no_docstring(x: int) -> int:
    return x


class ToolEnv(Environment):
    tools = (add, boom, hang, huge)


class TalkEnv(Environment):
    """Answers every turn with a user message until ``turns`` turns; a turn reward per turn."""

    def __init__(self, turns: int = 3):
        self.turns = turns

    def step(self, turn):
        if turn.index + 1 >= self.turns:
            return Step(done=True, reward=float(turn.index))
        return Step(messages=[{"role": "user", "content": f"go on {turn.index}"}], reward=float(turn.index))


class WrongTypeEnv(Environment):
    def step(self, turn):
        return "done"


class BadResetEnv(Environment):
    def reset(self, row):
        return "hello"


class FailingEnv(Environment):
    def step(self, turn):
        raise KeyError("environment broke")


class UndescribedToolEnv(Environment):
    tools = (no_docstring,)


class ScriptedPolicy:
    """A RolloutBackend that answers turn k of every episode with ``script[k]`` (text, tokenized
    with the run's tokenizer; ``<eos>`` in the text ends it with the EOS token); records every
    prompt it was given.  The policy of the bookkeeping tests; the real engines run too."""

    def __init__(self, tokenizer, script: list[str]):
        self.tokenizer, self.script, self.calls = tokenizer, script, []

    def generate(self, prompt_ids, sampling):
        self.calls.append([list(p) for p in prompt_ids])
        turn = len(self.calls) - 1
        out = []
        for i, prompt in enumerate(prompt_ids):
            for _ in range(sampling.n):
                text = self.script[min(turn, len(self.script) - 1)]
                eos = text.endswith("<eos>")
                ids = self.tokenizer(text.removesuffix("<eos>"), add_special_tokens=False)["input_ids"]
                ids += [self.tokenizer.eos_token_id] if eos else []
                stop = next((s for s in sampling.stop if s in text), None)
                cut = ids[: sampling.max_new_tokens]
                out.append(Generation(prompt_index=i, token_ids=cut, logprobs=[-0.5 - 0.01 * j for j in range(len(cut))],
                                      text=self.tokenizer.decode(cut, skip_special_tokens=True),
                                      finished=len(cut) == len(ids) and (eos or stop is not None), stop_reason=stop))
        return out

    def update_weights(self, named_tensors):
        return None

    def close(self):
        return None


def zero_outcome(completions, **columns):
    """An outcome reward of 0 for every row."""
    return [0.0] * len(completions)


def row_score(completions, score, **columns):
    """The row's ``score`` column as its outcome reward."""
    return [float(s) for s in score]


class RandomPolicy:
    """A RolloutBackend that samples 1-6 random printable characters and EOS, seeded by the
    prompt's ids, so every rank and process draws the same episodes."""

    def generate(self, prompt_ids, sampling):
        import random

        out = []
        for i, prompt in enumerate(prompt_ids):
            for k in range(sampling.n):
                rng = random.Random(hash((tuple(prompt), k)) & 0xFFFFFFFF)
                ids = [rng.randint(40, 90) for _ in range(rng.randint(1, 6))] + [2]
                out.append(Generation(prompt_index=i, token_ids=ids, logprobs=[-1.0] * len(ids), text="",
                                      finished=True))
        return out

    def close(self):
        return None


def tool_call(name: str, **arguments) -> str:
    """A model turn that calls ``name`` once, in the ``<tool_call>`` layout."""
    import json

    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


from rlkit.agents.calc import calculator  # noqa: E402 - for the evaluation tests (tests/test_eval_agents.py)


class PatientCalcEnv(Environment):
    """The calculator environment, but an episode ends after the row's ``patience`` turns
    (default: no earlier than a turn without a tool call), whatever the turn did."""

    tools = (calculator,)

    def reset(self, row):
        self.patience = int(row.get("patience", 99))
        return super().reset(row)

    def step(self, turn):
        if turn.index + 1 >= self.patience:
            return Step(done=True)
        return super().step(turn)
