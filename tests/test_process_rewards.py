"""Process rewards: spec section 4 credit examples, step splitting (merged separators, no
separator), token offsets, the arithmetic step labeller, process_rloo, and ProcessReward with
function, token-classification and causal-LM scorers on tiny models."""
from __future__ import annotations

import pytest
import torch

from rewards.prm import ProcessReward, arithmetic_step_label, split_steps, step_texts
from rlkit.algorithms.credit import (
    clip_rewards,
    credit_step_rewards,
    delta_rewards,
    min_form_returns,
    softmin_weighted,
    sum_form_returns,
)


# ---------------------------------------------------------------- credit (spec section 4)

def test_softmin_worked_examples():
    assert softmin_weighted([0.8, -0.4]) == pytest.approx([4.9e-6, -0.399998], abs=1e-6)
    assert softmin_weighted([-0.2, 0.6, 0.9]) == pytest.approx([-0.199930, 0.000201, 0.000015], abs=1e-6)
    assert sum(softmin_weighted([0.3, 0.1, 0.7], temperature=1e-3)) == pytest.approx(0.1, abs=1e-6)


def test_strict_min_form_and_sum_form():
    assert min_form_returns([-0.2, 0.6, 0.9]) == pytest.approx([-0.2, 0.6, 0.9])
    assert min_form_returns([0.8, -0.4]) == pytest.approx([-0.4, -0.4])
    assert sum_form_returns([0.8, -0.4, 0.1]) == pytest.approx([0.5, -0.3, 0.1])
    strict = credit_step_rewards([0.8, -0.4, 0.3], "min_form", min_form="strict")
    assert sum_form_returns(strict) == pytest.approx(min_form_returns([0.8, -0.4, 0.3]))


def test_clip_delta_worked_example():
    r = [0.9, 0.3, 0.6, 0.8]
    assert clip_rewards(r, eta=0.5) == pytest.approx([0, -0.2, 0, 0])
    assert delta_rewards(r) == pytest.approx([0.6, -0.3, -0.2, 0])
    assert credit_step_rewards(r, "clip_delta", eta=0.5) == pytest.approx([0.2, -0.2, 0, 0])
    assert delta_rewards([]) == [] and softmin_weighted([]) == []


def test_bounded_returns_do_not_grow_with_more_good_steps():
    """The point of min form, clip and delta: repeating good steps adds nothing."""
    short, padded = [0.9, 0.2], [0.9] * 10 + [0.2]
    for mode, form in (("min_form", "strict"), ("clip", "softmin"), ("delta", "softmin"), ("clip_delta", "softmin")):
        a = sum(credit_step_rewards(short, mode, min_form=form))
        b = sum(credit_step_rewards(padded, mode, min_form=form))
        assert b <= a + 1e-9, mode
    # softmin is a soft minimum: ten extra good steps move the return by under 0.01, not by 9
    assert sum(credit_step_rewards(padded, "min_form")) == pytest.approx(0.2, abs=0.01)
    assert sum(credit_step_rewards(padded, "sum")) > sum(credit_step_rewards(short, "sum")) + 8


def test_unknown_credit_modes_are_refused():
    with pytest.raises(ValueError, match="unknown credit mode"):
        credit_step_rewards([1.0], "max")
    with pytest.raises(ValueError, match="min_form"):
        credit_step_rewards([1.0], "min_form", min_form="hard")


# ---------------------------------------------------------------- steps

def _ends(pieces: list[str]) -> tuple[str, list[int]]:
    ends, n = [], 0
    for p in pieces:
        n += len(p)
        ends.append(n)
    return "".join(pieces), ends


def test_split_steps_with_merged_and_split_separators():
    text, ends = _ends(["Step", " 1", ".\n\n", "Then", " 2", "\n", "\nSo", " 3", "\n\n\n\n", "end"])
    spans = split_steps(text, ends)
    # ".\n\n" ends step 1; the separator split over "\n" + "\nSo" ends at "\nSo"; a double
    # separator inside one token ends one step; the last token ends the last step
    assert spans == [(0, 3), (3, 7), (7, 9), (9, 10)]
    assert step_texts(text, ends, spans) == ["Step 1.\n\n", "Then 2\n\nSo", " 3\n\n\n\n", "end"]


def test_split_steps_without_separator_and_empty():
    text, ends = _ends(["12", " +", " 30", " =", " 42"])
    assert split_steps(text, ends) == [(0, 5)]
    assert split_steps("", []) == []
    assert split_steps("a\n\n", [3]) == [(0, 1)]  # separator at the very end: one step


def test_token_char_ends_follow_the_decoded_text(tiny_model):
    from transformers import AutoTokenizer

    from rlkit.tokens import token_char_ends

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok.encode("12+3=15\n\nok", add_special_tokens=False)
    ends = token_char_ends(tok, ids)
    assert ends == list(range(1, len(ids) + 1))
    text = tok.decode(ids)
    assert split_steps(text, ends) == [(0, 9), (9, 11)]


def test_arithmetic_step_labeller():
    assert arithmetic_step_label("First 12 + 30 = 42.") == 1
    assert arithmetic_step_label("Then 42 - 5 = 36 apples") == 0
    assert arithmetic_step_label("7 x 8 = 56 and 1,000 / 8 = 125") == 1
    assert arithmetic_step_label("She has some apples.") == 1
    assert arithmetic_step_label("3 * 4 = 13") == 0


# ---------------------------------------------------------------- process_rloo

def test_process_rloo_by_hand():
    from rlkit.algorithms.advantages import get_advantage, whiten

    mask = torch.tensor([[False, True, True], [False, True, True], [False, True, False]])
    rewards = torch.tensor([[0.0, 0.5, 1.0], [0.0, -0.5, 0.0], [0.0, 2.0, 0.0]])
    groups = torch.tensor([0, 0, 1])
    out = get_advantage("process_rloo")(torch.zeros(3), groups, mask, token_rewards=rewards)
    # returns [[1.5, 1.0], [-0.5, 0.0], [2.0]]; baselines: row 0 -> -0.5, row 1 -> 1.5, row 2 alone -> 0
    raw = torch.tensor([[0.0, 2.0, 1.5], [0.0, -2.0, -1.5], [0.0, 2.0, 0.0]])
    assert torch.allclose(out, whiten(raw, mask))


# ---------------------------------------------------------------- the reward module

def test_process_reward_puts_credited_step_rewards_on_step_ends():
    text, ends = _ends(["12", " + 30", " = 42", ".\n\n", "42", " - 5 = 36", "\n\n", "#### 36"])
    module = ProcessReward(kind="function", fn="rewards.prm:arithmetic_step_scores", credit="sum")
    [out] = module([text], prompts=["q"], completion_offsets=[ends])
    assert out.score is None and [s[:2] for s in out.steps] == [(0, 4), (4, 7), (7, 8)]
    assert [s[2] for s in out.steps] == [1.0, 0.0, 1.0]
    assert out.token_rewards == [0, 0, 0, 1.0, 0, 0, 0.0, 1.0]
    strict = ProcessReward(kind="function", fn="rewards.prm:arithmetic_step_scores", credit="min_form",
                           min_form="strict")
    [out] = strict([text], prompts=["q"], completion_offsets=[ends])
    assert sum(out.token_rewards) == 0.0  # min over the steps
    assert module.update(None)["steps_mean"] == 3


def test_process_reward_refuses_bad_settings():
    with pytest.raises(ValueError, match="unknown credit"):
        ProcessReward(fn="rewards.prm:arithmetic_step_scores", credit="mean")
    with pytest.raises(ValueError, match="needs model"):
        ProcessReward(kind="causal_lm")
    with pytest.raises(ValueError, match="completion_offsets"):
        ProcessReward(fn="rewards.prm:arithmetic_step_scores")(["x"])


def test_model_scorers_on_tiny_models(tiny_model, tmp_path, one_thread):
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model, num_labels=2)
    torch.manual_seed(0)
    AutoModelForTokenClassification.from_config(config).save_pretrained(tmp_path / "prm")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "prm")
    text, ends = _ends(list("1+2=3\n\n2+2=5\n\nok"))
    for kind, path in (("token_classification", tmp_path / "prm"), ("causal_lm", tiny_model)):
        module = ProcessReward(kind=kind, model=str(path), credit="sum", batch_size=2)
        outs = module([text, text[:7]], prompts=["Add.", "Add."], completion_offsets=[ends, ends[:7]])
        scores = [[s[2] for s in o.steps] for o in outs]
        assert [len(s) for s in scores] == [3, 1]
        low = -1.0 if kind == "token_classification" else 0.0
        assert all(low <= v <= 1.0 for row in scores for v in row)
        assert scores[1][0] == pytest.approx(scores[0][0], abs=1e-5)  # same prompt and first step


def test_prm_config_runs_end_to_end_with_vllm(cli, tiny_model):
    """configs/grpo_prm_arith.yaml on the tiny model: step rewards reach the token rewards,
    process_rloo trains, the PRM's step statistics are logged."""
    import json

    from conftest import REPO_ROOT, tiny_overrides

    overrides = tiny_overrides(tiny_model, "vllm", train__steps=2, train__lr="3e-3", eval__before="false",
                               train__save_final="false", rollout__max_new_tokens=16, eval__max_new_tokens=16)
    # the rule-based scorer gives a random model's digit soup the same score everywhere (no
    # equations): the tiny model as a causal-LM PRM gives step scores that differ
    overrides.append("data.max_prompt_tokens=400")  # the tiny model's tokenizer has a token per character
    overrides.append("rewards.functions=[{fn: 'rewards.math:correctness'}, {fn: 'rewards.prm:ProcessReward', "
                     f"name: prm, kwargs: {{kind: causal_lm, model: '{tiny_model}', step_tag: '=', "
                     "credit: min_form}}]")
    res = cli(overrides, config=REPO_ROOT / "configs" / "grpo_prm_arith.yaml", timeout=300)
    assert res.returncode == 0, res.describe()
    lines = [json.loads(s) for s in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["kind"] == "train"]
    assert len(train) == 2
    for m in train:
        assert m["prm/steps_mean"] >= 1 and 0 <= m["prm/step_score_mean"] <= 1
        assert m["reward/failures"] == 0 and m["trained_rows"] > 0 and m["grad_norm"] > 0


# ---------------------------------------------------------------- training a PRM

def _write_jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_step_rows_are_checked_with_file_and_row(tmp_path):
    from rlkit.prm_training import PRMDataError, read_step_rows

    good = {"prompt": "p", "steps": ["a", "b"], "labels": [1, 0]}
    with pytest.raises(PRMDataError, match=r"bad.jsonl, row 2: 'labels' must hold one 0 or 1 per step"):
        read_step_rows(_write_jsonl(tmp_path / "bad.jsonl", [good, {"prompt": "p", "steps": ["a"], "labels": [1, 1]}]))
    (tmp_path / "broken.jsonl").write_text('{"prompt": "p", "steps": ["a"], "labels": [1]}\n{oops\n')
    with pytest.raises(PRMDataError, match="broken.jsonl, row 2: not JSON"):
        read_step_rows(tmp_path / "broken.jsonl")
    with pytest.raises(PRMDataError, match="'steps' must be a non-empty list"):
        read_step_rows(_write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "p", "steps": [], "labels": []}]))
    assert read_step_rows(_write_jsonl(tmp_path / "ok.jsonl", [good])) == [good]


def test_train_prm_learns_a_step_rule_and_scores_with_it(tiny_model, tmp_path, one_thread):
    """Steps holding a '7' are bad: a tiny PRM learns that, and ProcessReward reads it back."""
    import random

    from rlkit.prm_training import train_prm

    rng = random.Random(0)
    rows = []
    for _ in range(160):
        steps = ["".join(rng.choice("abcdef7") for _ in range(4)) + "\n\n" for _ in range(3)]
        rows.append({"prompt": "q", "steps": steps, "labels": [0 if "7" in s else 1 for s in steps]})
    data = _write_jsonl(tmp_path / "steps.jsonl", rows)
    metrics = train_prm(data, tmp_path / "prm", model=tiny_model, epochs=6, lr=3e-3, batch_size=16,
                        log=lambda line: None)
    before, after = metrics["eval_step_accuracy_before"], metrics["eval_step_accuracy_after"]
    # untrained it scores about the majority label's share (0.58); training lifts it past 90%
    assert after >= 0.9 and after >= before + 0.3, metrics
    assert (tmp_path / "prm" / "prm_metrics.json").is_file() and not (tmp_path / ".tmp-prm").exists()
    module = ProcessReward(kind="token_classification", model=str(tmp_path / "prm"), credit="sum")
    text, ends = _ends(["ab", "cd", "\n\n", "a7", "bc", "\n\n"])
    [out] = module([text], prompts=["q"], completion_offsets=[ends])
    good, bad = (s[2] for s in out.steps)
    assert good > 0 > bad


def test_label_arith_steps_writes_checked_rows(tiny_model, tmp_path, one_thread):
    from rlkit.prm_training import label_arith_steps, read_step_rows

    counts = label_arith_steps(tmp_path / "steps.jsonl", model=tiny_model, num_prompts=4, samples=2,
                               max_new_tokens=12, backend="hf")
    rows = read_step_rows(tmp_path / "steps.jsonl")
    assert counts["rows"] == len(rows) > 0 and counts["steps"] == sum(len(r["steps"]) for r in rows)
    assert all(r["prompt"] for r in rows)
