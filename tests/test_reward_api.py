"""The contract for stateful rewards (``rewards.StatefulReward``, called by ``CombinedReward``) and
the interface model-backed rewards get from rlkit (``rlkit.reward_api.RewardContext``)."""
from __future__ import annotations

import types
from pathlib import Path

import pytest

from rewards import CombinedReward, Component, RewardError, RewardModule, StatefulReward, combine
from rlkit.reward_api import RewardContext, trainable_config


def length(completions, **columns):
    return [float(len(c)) for c in completions]


class Tracker:
    """A stateful reward written against the Protocol alone (no base class): it records every
    call; its score is 10 * the number of updates seen."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.updates = 0

    def __call__(self, completions, **columns):
        return [10.0 * self.updates] * len(completions)

    def attach(self, context):
        self.calls.append(("attach", context))

    def update(self, batch):
        self.updates += 1
        self.calls.append(("update", batch.size))
        return {"updates": float(self.updates), "rows": float(batch.size)}

    def state_dict(self):
        return {"updates": self.updates}

    def load_state_dict(self, state):
        self.calls.append(("load_state_dict", dict(state)))
        self.updates = state["updates"]

    def save_state(self, folder):
        self.calls.append(("save_state", Path(folder)))

    def load_state(self, folder):
        self.calls.append(("load_state", Path(folder)))

    def close(self):
        self.calls.append(("close",))


def test_combined_reward_drives_a_protocol_reward(tmp_path):
    tracker = Tracker()
    assert isinstance(tracker, StatefulReward)
    reward = combine(track=tracker, length=(length, 0.5))
    assert list(reward.stateful) == ["track"]          # the plain function has no state
    context = RewardContext(run_dir=tmp_path, seed=3, step=0)
    reward.attach(context)
    assert tracker.calls == [("attach", context)]
    assert reward.update(types.SimpleNamespace(size=4)) == {"track/updates": 1.0, "track/rows": 4.0}
    assert reward(["abcd"]) == [10.0 + 0.5 * 4]
    assert reward.state_dict() == {"track": {"updates": 1}}
    reward.save_state(tmp_path / "reward_state")
    reward.load_state(tmp_path / "reward_state")
    reward.load_state_dict({"track": {"updates": 5}})
    assert tracker.updates == 5
    reward.close()
    assert tracker.calls[1:] == [("update", 4), ("save_state", tmp_path / "reward_state" / "track"),
                                 ("load_state", tmp_path / "reward_state" / "track"),
                                 ("load_state_dict", {"updates": 5}), ("close",)]
    with pytest.raises(RewardError, match="'length' is not a stateful reward"):
        reward.load_state_dict({"length": {}})


class HalfStateful:
    """update and state_dict, but no load_state_dict (its state would be lost on resume)."""

    def __call__(self, completions, **columns):
        return [0.0] * len(completions)

    def update(self, batch):
        return {}

    def state_dict(self):
        return {}


def test_a_partial_stateful_reward_is_refused():
    with pytest.raises(TypeError, match=r"'half' defines update, state_dict but not attach, load_state_dict, "
                                        r"save_state, load_state, close.*RewardModule"):
        combine(half=HalfStateful(), length=length)
    with pytest.raises(TypeError, match="'half'"):
        CombinedReward({"half": Component(HalfStateful(), name="half")})


def test_reward_module_gives_no_op_defaults(tmp_path):
    class OnlyUpdate(RewardModule):
        def __call__(self, completions, **columns):
            return [1.0] * len(completions)

        def update(self, batch):
            return {"seen": 1.0}

    reward = combine(only=OnlyUpdate())
    reward.attach(RewardContext())
    assert reward.update(None) == {"only/seen": 1.0}
    assert reward.state_dict() == {"only": {}}
    reward.save_state(tmp_path)
    assert list(tmp_path.iterdir()) == []             # nothing to write: no folder made
    reward.load_state_dict({"only": {}})
    reward.close()


def test_context_defaults_are_one_process():
    context = RewardContext()
    coll = context.collectives
    assert (coll.rank, coll.world_size, coll.is_main) == (0, 1, True)
    assert coll.all_reduce([1.0, 2.5]) == [1.0, 2.5] and coll.broadcast_object({"a": 1}) == {"a": 1}
    with pytest.raises(RuntimeError, match="make_trainable needs a training run's context"):
        context.make_trainable(lr=1e-6, grad_clip=1.0)


def test_trainable_config_is_the_policy_config_without_lora_kl_or_schedule():
    import dataclasses

    from rlkit.config import Config

    base = Config()
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, lora=dataclasses.replace(base.model.lora, r=8)),
                               algo=dataclasses.replace(base.algo, kl_coef=0.1, entropy_coef=0.01))
    cfg = trainable_config(base, "prm-path", lr=1e-6, grad_clip=10.0)
    assert (cfg.model.path, cfg.model.lora.r, cfg.model.reference) == ("prm-path", 0, None)
    assert (cfg.train.lr, cfg.train.grad_clip, cfg.train.lr_schedule, cfg.train.warmup_steps) == (1e-6, 10.0,
                                                                                                   "constant", 0)
    assert (cfg.algo.kl_coef, cfg.algo.entropy_coef, cfg.rollout.temperature) == (0.0, 0.0, 1.0)
    assert cfg.backend == base.backend and cfg.model.dtype == base.model.dtype
    assert trainable_config(base, lr=1.0, grad_clip=1.0).model.path == base.model.path


class RankOne:
    """The collectives of rank 1 of 2: rank 0's broadcast payload is given in advance."""

    rank, world_size, is_main = 1, 2, False

    def __init__(self, from_rank0):
        self.from_rank0, self.broadcasts = from_rank0, 0

    def broadcast_object(self, obj):
        self.broadcasts += 1
        return self.from_rank0

    def all_reduce(self, values, op="sum"):
        return list(values)

    def barrier(self):
        return None


def test_mpo_on_a_non_main_rank_takes_the_rubric_from_the_broadcast(tmp_path):
    from rewards.mpo import MetaReward

    class NeverCalled:
        def generate(self, prompts, max_tokens, temperature):
            raise AssertionError("only rank 0 runs the meta model")

    class Judge:
        def generate(self, prompts, max_tokens, temperature):
            return ["task_fit: 3 - fine" for _ in prompts]

    rubric0 = [{"id": "task_fit", "description": "Does what was asked.", "min": 0, "max": 5}]
    merged = rubric0 + [{"id": "detail", "description": "Uses concrete detail.", "min": 0, "max": 2}]
    coll = RankOne((merged, ["an analysis"], 0, 1))
    module = MetaReward(rubric=rubric0, client=Judge(), meta_client=NeverCalled(), every=1)
    module.attach(RewardContext(run_dir=tmp_path, collectives=coll))
    module(["text"], prompts=["Write"])
    metrics = module.update(types.SimpleNamespace(rows=[{"prompt": "Write", "completion": "text"}]))
    assert coll.broadcasts == 1 and module.rubric.ids == ["task_fit", "detail"]
    assert metrics["rubric_version"] == 1 and metrics["max_score"] == 7.0
    assert not (tmp_path / "rubrics").exists()          # rank 0 writes the files
