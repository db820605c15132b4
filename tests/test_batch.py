"""RolloutBatch: build_batch alignment, validate() messages, select / trimmed / reward placement."""
from __future__ import annotations

import math

import pytest
import torch

from rlkit.batch import PER_TOKEN, RolloutBatch, build_batch

PAD = 0


def sample_batch(with_rows: bool = True) -> RolloutBatch:
    """Three rows of different prompt and completion lengths; row 2 has an empty completion."""
    return build_batch(
        prompt_ids=[[11, 12, 13], [21, 22], [31, 32, 33, 34]],
        completion_ids=[[14, 15], [23, 24, 25, 26], []],
        group_ids=[0, 0, 1],
        finished=[True, False, False],
        pad_token_id=PAD,
        rollout_logprobs=[[-0.1, -0.2], [-1.0, -2.0, -3.0, -4.0], []],
        rows=[{"prompt": "a", "completion": "x"}, {"prompt": "a", "completion": "y"},
              {"prompt": "b", "completion": ""}] if with_rows else None,
    )


# ---------------------------------------------------------------- build_batch

def test_build_batch_concatenates_and_right_pads():
    b = sample_batch()
    assert b.input_ids.shape == (3, 6) and b.input_ids.dtype == torch.long
    assert b.input_ids.tolist() == [
        [11, 12, 13, 14, 15, PAD],
        [21, 22, 23, 24, 25, 26],
        [31, 32, 33, 34, PAD, PAD],
    ]
    assert b.attention_mask.tolist() == [
        [True] * 5 + [False],
        [True] * 6,
        [True] * 4 + [False] * 2,
    ]
    b.validate()


def test_loss_mask_is_exactly_the_completion_tokens():
    b = sample_batch()
    assert b.loss_mask.dtype == torch.bool
    assert b.loss_mask.tolist() == [
        [False, False, False, True, True, False],
        [False, False, True, True, True, True],
        [False] * 6,
    ]
    assert b.completion_lengths.tolist() == [2, 4, 0]
    # every masked token is a completion token, in order
    for i, comp in enumerate([[14, 15], [23, 24, 25, 26], []]):
        assert b.input_ids[i][b.loss_mask[i]].tolist() == comp


def test_rollout_logprobs_land_on_the_completion_columns():
    b = sample_batch()
    lp = b.rollout_logprobs
    assert lp.shape == (3, 6) and lp.dtype == torch.float32
    assert lp[0].tolist() == pytest.approx([0, 0, 0, -0.1, -0.2, 0])
    assert lp[1].tolist() == pytest.approx([0, 0, -1.0, -2.0, -3.0, -4.0])
    assert lp[2].tolist() == [0.0] * 6
    # the alignment rule: logprobs[:, t] scores input_ids[:, t]; zero wherever loss_mask is False
    assert (lp[~b.loss_mask] == 0).all()
    assert lp[0, 3].item() == pytest.approx(-0.1) and b.input_ids[0, 3].item() == 14


def test_build_batch_per_sequence_fields_and_rows():
    b = sample_batch()
    assert b.group_ids.tolist() == [0, 0, 1] and b.group_ids.dtype == torch.long
    assert b.finished.tolist() == [True, False, False] and b.finished.dtype == torch.bool
    assert b.size == 3 and [r["prompt"] for r in b.rows] == ["a", "a", "b"]
    for name in ("old_logprobs", "ref_logprobs", "values", "token_rewards", "advantages", "returns", "scores"):
        assert getattr(b, name) is None
    assert b.reward_components == {}


def test_build_batch_without_logprobs_or_rows():
    b = build_batch([[1, 2]], [[3]], [0], [True], pad_token_id=PAD)
    assert b.rollout_logprobs is None and b.rows == []
    b.validate()


def test_build_batch_errors():
    with pytest.raises(ValueError, match="differ in length"):
        build_batch([[1]], [[2], [3]], [0], [True], pad_token_id=PAD)
    with pytest.raises(ValueError, match="row 1 has an empty prompt"):
        build_batch([[1], []], [[2], [3]], [0, 0], [True, True], pad_token_id=PAD)


# ---------------------------------------------------------------- validate

def test_validate_accepts_a_full_batch():
    b = sample_batch()
    B, T = b.input_ids.shape
    for name in ("old_logprobs", "ref_logprobs", "values", "advantages", "returns"):
        setattr(b, name, torch.zeros(B, T))
    b.add_token_term("outcome", torch.zeros(B, T))
    b.scores = torch.zeros(B)
    b.reward_components = {"correct": torch.tensor([1.0, math.nan, 0.0])}
    b.validate()


@pytest.mark.parametrize("name", [n for n in PER_TOKEN if n not in ("input_ids",)])
def test_validate_names_a_per_token_field_with_the_wrong_shape(name):
    b = sample_batch()
    bad = torch.zeros(3, 5, dtype=torch.bool if "mask" in name else torch.float32)
    setattr(b, name, bad)
    with pytest.raises(ValueError, match=rf"RolloutBatch\.{name} has shape \(3, 5\), expected \(3, 6\)"):
        b.validate()


@pytest.mark.parametrize("name", ["group_ids", "finished", "scores"])
def test_validate_names_a_per_sequence_field_with_the_wrong_shape(name):
    b = sample_batch()
    setattr(b, name, torch.zeros(4, dtype=torch.bool if name == "finished" else torch.long))
    with pytest.raises(ValueError, match=rf"RolloutBatch\.{name} has shape \(4,\), expected \(3,\)"):
        b.validate()


def test_validate_names_a_reward_component_with_the_wrong_shape():
    b = sample_batch()
    b.reward_components = {"fmt": torch.zeros(2)}
    with pytest.raises(ValueError, match="reward_components\\['fmt'\\]"):
        b.validate()


def test_validate_rejects_input_ids_that_are_not_2d():
    b = sample_batch()
    b.input_ids = b.input_ids.flatten()
    with pytest.raises(ValueError, match=r"input_ids must be \[B, T\]"):
        b.validate()


def test_validate_rejects_loss_mask_on_padding():
    b = sample_batch()
    b.loss_mask[0, 5] = True            # column 5 of row 0 is padding
    with pytest.raises(ValueError, match="loss_mask.*attention_mask.*padding"):
        b.validate()


def test_validate_rejects_loss_mask_at_column_0():
    b = sample_batch()
    b.loss_mask[1, 0] = True
    with pytest.raises(ValueError, match=r"loss_mask\[:, 0\]"):
        b.validate()


@pytest.mark.parametrize("name", ["attention_mask", "loss_mask", "finished"])
@pytest.mark.parametrize("dtype", [torch.long, torch.float32, torch.uint8])
def test_validate_rejects_non_bool_masks(name, dtype):
    b = sample_batch()
    setattr(b, name, getattr(b, name).to(dtype))
    with pytest.raises(ValueError, match=rf"RolloutBatch\.{name} must be bool"):
        b.validate()


def test_validate_rejects_rows_of_the_wrong_length():
    b = sample_batch()
    b.rows = b.rows[:2]
    with pytest.raises(ValueError, match="rows has 2 entries, expected 3"):
        b.validate()


# ---------------------------------------------------------------- select, trimmed, rewards

def test_select_picks_rows_of_every_field():
    b = sample_batch()
    b.scores = torch.tensor([0.5, 1.0, 2.0])
    b.advantages = torch.arange(18, dtype=torch.float32).reshape(3, 6)
    b.reward_components = {"c": torch.tensor([1.0, math.nan, 3.0])}
    s = b.select([2, 0])
    assert s.size == 2
    assert s.input_ids.tolist() == [b.input_ids[2].tolist(), b.input_ids[0].tolist()]
    assert torch.equal(s.loss_mask, b.loss_mask[[2, 0]])
    assert torch.equal(s.rollout_logprobs, b.rollout_logprobs[[2, 0]])
    assert torch.equal(s.advantages, b.advantages[[2, 0]])
    assert s.scores.tolist() == [2.0, 0.5]
    assert s.group_ids.tolist() == [1, 0] and s.finished.tolist() == [False, True]
    assert s.reward_components["c"].tolist() == [3.0, 1.0]
    assert [r["completion"] for r in s.rows] == ["", "x"]
    assert s.old_logprobs is None
    s.validate()
    # select with a tensor index, and selecting rows from a batch without rows
    assert b.select(torch.tensor([1])).input_ids.tolist() == [b.input_ids[1].tolist()]
    assert sample_batch(with_rows=False).select([0]).rows == []


def test_select_does_not_alias_the_original():
    b = sample_batch()
    s = b.select([0])
    s.input_ids[0, 0] = 999
    assert b.input_ids[0, 0].item() == 11


def test_trimmed_drops_columns_that_are_padding_everywhere():
    b = sample_batch()
    short = b.select([0, 2])                       # longest row has 5 real tokens
    short.advantages = torch.ones(2, 6)
    short.scores = torch.tensor([1.0, 0.0])
    t = short.trimmed()
    assert t.input_ids.shape == (2, 5)
    for name in PER_TOKEN:
        v = getattr(t, name)
        assert v is None or v.shape == (2, 5), name
    assert torch.equal(t.input_ids, short.input_ids[:, :5])
    assert torch.equal(t.rollout_logprobs, short.rollout_logprobs[:, :5])
    assert t.scores.tolist() == [1.0, 0.0]      # per-sequence fields untouched
    assert t.rows == short.rows
    t.validate()


def test_trimmed_returns_self_when_nothing_to_trim():
    b = sample_batch()
    assert b.trimmed() is b


def test_last_token_index():
    b = sample_batch()
    assert b.last_token_index().tolist() == [4, 5, -1]


def test_outcome_token_rewards_sit_on_the_last_sampled_token():
    b = sample_batch()
    r = b.outcome_token_rewards(torch.tensor([1.5, -2.0, 7.0]))
    assert r.shape == (3, 6) and r.dtype == torch.float32
    expected = torch.zeros(3, 6)
    expected[0, 4] = 1.5
    expected[1, 5] = -2.0                            # row 2 has no sampled token: no reward anywhere
    assert torch.equal(r, expected)
    assert (r[~b.loss_mask] == 0).all()


def test_to_keeps_everything():
    b = sample_batch()
    b.reward_components = {"c": torch.tensor([1.0, 2.0, 3.0])}
    c = b.to("cpu")
    assert torch.equal(c.input_ids, b.input_ids) and c.rows == b.rows
    assert torch.equal(c.reward_components["c"], b.reward_components["c"])


# ---------------------------------------------------------------- trainer log-probs follow the rule

def reference_logprobs(model, batch: RolloutBatch) -> torch.Tensor:
    """Full forward, one row at a time without padding: logp[t] = log p(ids[t] | ids[:t])."""
    out = torch.zeros(batch.input_ids.shape)
    for i in range(batch.size):
        n = int(batch.attention_mask[i].sum())
        ids = batch.input_ids[i, :n].unsqueeze(0)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float().log_softmax(-1)   # [n, V]
        out[i, 1:n] = logits[:-1].gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
    return out


def test_forward_logprobs_follow_the_alignment_rule(tiny_model):
    from rlkit.backends.single import forward_logprobs
    from rlkit.models import load_causal_lm

    model = load_causal_lm(tiny_model, "float32", "cpu")
    b = build_batch([[1, 40, 41, 42], [1, 50], [1, 60, 61]], [[70, 71], [72, 73, 74, 2], [75]],
                    [0, 1, 2], [False, True, False], pad_token_id=PAD)
    with torch.no_grad():
        logp, ent = forward_logprobs(model, b, with_entropy=True, autocast=False)
    assert logp.shape == b.input_ids.shape and ent.shape == b.input_ids.shape
    ref = reference_logprobs(model, b)
    assert torch.allclose(logp[b.loss_mask], ref[b.loss_mask], atol=1e-5)
    assert (logp[:, 0] == 0).all()
    assert (ent[b.loss_mask] > 0).all()


def test_forward_logprobs_with_an_empty_completion_row(tiny_model):
    from rlkit.backends.single import forward_logprobs
    from rlkit.models import load_causal_lm

    model = load_causal_lm(tiny_model, "float32", "cpu")
    b = build_batch([[1, 5, 6], [1, 7, 8]], [[9, 10], []], [0, 1], [False, False], pad_token_id=PAD)
    with torch.no_grad():
        logp, _ = forward_logprobs(model, b, with_entropy=False, autocast=False)
    ref = reference_logprobs(model, b)
    assert torch.allclose(logp[b.loss_mask], ref[b.loss_mask], atol=1e-5)


def test_token_terms_are_named_sum_to_token_rewards_and_travel_with_rows():
    b = sample_batch()
    B, T = b.input_ids.shape
    assert b.token_rewards is None and b.token_terms == {}
    b.add_token_term("outcome", b.outcome_token_rewards(torch.tensor([1.0, 0.0, 2.0])))
    kl = torch.zeros(B, T)
    kl[0, 3] = -0.5
    b.add_token_term("kl", kl)
    b.add_token_term("kl", kl)                     # accumulates
    assert b.token_rewards[0].tolist() == [0, 0, 0, -1.0, 1.0, 0]
    assert set(b.select([0]).token_terms) == {"outcome", "kl"}
    assert b.select([2]).token_terms["outcome"].tolist() == [[0, 0, 0, 0, 0, 0]]  # no sampled token
    with pytest.raises(ValueError, match="token term 'kl' has shape"):
        b.add_token_term("kl", torch.zeros(B, T + 1))
    b.token_terms["bad"] = torch.zeros(B, 2)
    with pytest.raises(ValueError, match=r"token_terms\['bad'\] has shape"):
        b.validate()
