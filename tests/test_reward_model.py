"""Outcome reward models: ``rewards.rm.RewardModel`` on a real tiny sequence classifier made
here, and ``rlkit train-rm`` (``rlkit.rm_training``) with TRL's RewardTrainer on the tiny
causal LM of ``rlkit.testing``."""
from __future__ import annotations

import argparse
import json
import random
import statistics

import pytest

from rewards import RewardError, combine
from rewards.rm import RewardModel, rm_input_ids
from rlkit import rm_training
from rlkit.testing import PAD_ID, make_char_tokenizer, tiny_llama_config

ROWS = [("What is 2 + 3?", "5"), ("Name a colour.", "A deep blue, like the sea."), ("Hi", "Hello there!")]


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory) -> str:
    """A random one-label ``LlamaForSequenceClassification`` + the character tokenizer."""
    import torch
    from transformers import LlamaForSequenceClassification

    tokenizer = make_char_tokenizer()
    config = tiny_llama_config(len(tokenizer), hidden_size=32, layers=1, heads=1, kv_heads=1, intermediate_size=64)
    config.num_labels, config.initializer_range = 1, 0.5  # a large init: scores far apart, easy to tell
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    path = tmp_path_factory.mktemp("tiny_rm") / "rm"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def direct_logit(path: str, text: str) -> float:
    """The model's logit for ``text`` computed without RewardModel: one unpadded row."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return float(model(input_ids=ids).logits[0, 0])


def raw_scores(path: str) -> list[float]:
    """The logits of ``ROWS`` in the chat layout, each scored alone without RewardModel."""
    return [direct_logit(path, f"<s>user: {p}</s>\n<s>assistant: {c}</s>\n") for p, c in ROWS]


# ---------------------------------------------------------------- RewardModel


def test_score_is_the_models_logit_on_the_chat_layout(tiny_rm):
    """Rows of different lengths in batches of 2 (padding), a text prompt, a message-list prompt
    and no prompt: each score equals the logit of its chat text scored alone."""
    rm = RewardModel(path=tiny_rm, batch_size=2, bf16=False)
    prompts = ["What is 2 + 3?", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], None]
    completions = ["5", "Hello there, friend!", "ok"]
    scores = rm(completions, prompts=prompts)
    texts = ["<s>user: What is 2 + 3?</s>\n<s>assistant: 5</s>\n",
             "<s>system: Be brief.</s>\n<s>user: Hi</s>\n<s>assistant: Hello there, friend!</s>\n",
             "<s>assistant: ok</s>\n"]
    assert scores == pytest.approx([direct_logit(tiny_rm, t) for t in texts], abs=1e-5)
    assert len(set(scores)) == 3
    assert not any(p.requires_grad for p in rm.model.parameters()) and not rm.model.training


def test_max_length_keeps_the_end(tiny_rm):
    """The last 12 tokens of "<s>user: Hi</s>\n<s>assistant: Hello there, friend!</s>\n"."""
    rm = RewardModel(path=tiny_rm, max_length=12, bf16=False)
    [score] = rm(["Hello there, friend!"], prompts=["Hi"])
    assert score == pytest.approx(direct_logit(tiny_rm, "e, friend!</s>\n"), abs=1e-5)


def test_normalize_batch_gives_mean_0_std_1(tiny_rm):
    raw = raw_scores(tiny_rm)
    rm = RewardModel(path=tiny_rm, normalize="batch", bf16=False)
    values = rm([c for _, c in ROWS], prompts=[p for p, _ in ROWS])
    assert statistics.fmean(values) == pytest.approx(0.0, abs=1e-6)
    assert statistics.pstdev(values) == pytest.approx(1.0, abs=1e-6)
    mean, std = statistics.fmean(raw), statistics.pstdev(raw)
    assert values == pytest.approx([(r - mean) / std for r in raw], abs=1e-6)


def test_normalize_running_keeps_its_statistics_in_state_dict(tiny_rm):
    """Call 1 scores rows 0-1, call 2 row 2: call 2 is normalised with the mean / std of all three;
    a fresh module loading call 1's state gives call 2 the same value."""
    raw = raw_scores(tiny_rm)
    rm = RewardModel(path=tiny_rm, normalize="running", bf16=False)
    first = rm([ROWS[0][1], ROWS[1][1]], prompts=[ROWS[0][0], ROWS[1][0]])
    assert first == pytest.approx([-1.0, 1.0] if raw[0] < raw[1] else [1.0, -1.0], abs=1e-6)
    state = rm.state_dict()
    [second] = rm([ROWS[2][1]], prompts=[ROWS[2][0]])
    mean, std = statistics.fmean(raw), statistics.pstdev(raw)
    assert second == pytest.approx((raw[2] - mean) / std, abs=1e-6)
    resumed = RewardModel(path=tiny_rm, normalize="running", bf16=False)
    resumed.load_state_dict(state)
    assert resumed([ROWS[2][1]], prompts=[ROWS[2][0]]) == pytest.approx([second], abs=1e-9)
    assert rm.update(None)["running_mean"] == pytest.approx(mean)


def test_in_combine_beside_a_rule_reward_gives_the_weighted_sum(tiny_rm):
    raw = raw_scores(tiny_rm)

    def has_digit(completions, **columns):
        return [float(any(ch.isdigit() for ch in c)) for c in completions]

    with combine(rm=(RewardModel(path=tiny_rm, bf16=False), 0.5), rule=(has_digit, 2.0)) as reward:
        result = reward.score([c for _, c in ROWS], prompts=[p for p, _ in ROWS], answer=["5", None, None])
    assert result.components["rm"] == pytest.approx(raw, abs=1e-6)
    assert result.scores == pytest.approx([0.5 * r + 2.0 * d for r, d in zip(raw, [1.0, 0.0, 0.0])], abs=1e-6)
    assert not result.failures


def test_a_failing_batch_costs_only_its_failing_rows(tiny_rm):
    """The model raises on any batch holding a '#' (a real forward hook); row 3's prompt is a
    broken chat message.  Only rows 1 and 3 fail; rows 0 and 2 are z-scored between themselves."""
    rm = RewardModel(path=tiny_rm, normalize="batch", batch_size=8, bf16=False)
    rm.load()
    poison = rm.tokenizer.convert_tokens_to_ids("#")

    def refuse(module, args, kwargs):
        if (kwargs["input_ids"] == poison).any():
            raise RuntimeError("poisoned batch")

    rm.model.register_forward_pre_hook(refuse, with_kwargs=True)
    prompts = ["a", "b", "c", [{"role": "user"}]]
    reward, strict = combine(rm=rm), combine(rm=rm, fail_fast=True)
    result = reward.score(["one", "#two", "three!", "four"], prompts=prompts)
    assert sorted((f.row, f.error.split(":")[-1].strip()) for f in result.failures) == [
        (1, "poisoned batch"), (3, "'dict object' has no attribute 'content'")]
    values = result.components["rm"]
    assert values[0] == pytest.approx(-values[2]) and abs(values[0]) == pytest.approx(1.0)
    assert values[1] != values[1] and values[3] != values[3]  # NaN: failed
    assert rm.update(None)["failed_rows"] == 2.0
    with pytest.raises(RewardError, match="failed on row 1: .*poisoned batch"):
        strict.score(["one", "#two"], prompts=["a", "b"])
    reward.close()
    strict.close()


def test_bf16_autocast_where_the_device_runs_it(tiny_rm):
    import torch

    from rewards.rm import bf16_fast

    rm = RewardModel(path=tiny_rm, bf16=True)
    seen = []
    rm.load()
    rm.model.score.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    values = rm([c for _, c in ROWS], prompts=[p for p, _ in ROWS])
    assert rm.autocast == bf16_fast(torch.device("cpu"))
    assert seen == [torch.bfloat16 if rm.autocast else torch.float32]
    assert values == pytest.approx(raw_scores(tiny_rm), abs=0.05 * max(map(abs, values)))


def test_refuses_a_causal_lm_and_bad_settings(tiny_model, tiny_rm, tmp_path):
    with pytest.raises(ValueError, match="not a one-label sequence-classification model"):
        RewardModel(path=tiny_model).load()
    with pytest.raises(ValueError, match="missing is not a model folder"):
        RewardModel(path=str(tmp_path / "missing")).load()
    with pytest.raises(ValueError, match="normalize must be one of none, batch, running"):
        RewardModel(path=tiny_rm, normalize="zscore")
    with pytest.raises(ValueError, match="bf16 must be true or false"):
        RewardModel(path=tiny_rm, bf16="auto")


def test_text_layout_without_a_chat_template_adds_eos():
    tokenizer = make_char_tokenizer()
    tokenizer.chat_template = None
    assert tokenizer.decode(rm_input_ids(tokenizer, "Q: ", "yes")) == "Q: yes</s>"
    with pytest.raises(ValueError, match="no chat template"):
        rm_input_ids(tokenizer, [{"role": "user", "content": "Q"}], "yes")


# ---------------------------------------------------------------- rlkit train-rm


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    rm_training.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "p", "chosen": "a", "rejected": "b"}', '{"prompt": "p", "chosen": "a"}'],
     "line 2: missing 'rejected'"),
    (['{"chosen": "a", "rejected": "b"}'], "line 1: missing 'prompt'"),
    (['{"prompt": "p", "chosen": "a", "rejected": ["b"]}'], "line 1: 'chosen' and 'rejected' must both be text or both chat messages"),
    (['{"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant"}]}'],
     "line 1: 'rejected' must be text or a non-empty list of {role, content} messages"),
    (["", "not json"], "line 2: not JSON"),
    ([], "no preference pairs (empty file)"),
])
def test_bad_data_exits_2_with_one_line(tmp_path, capsys, lines, message):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(lines))
    assert rm_training.main(cli_args("--data", str(data), "--output", str(tmp_path / "rm"))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{data}" in err and message in err, err
    assert not (tmp_path / "rm").exists()


def test_bad_settings_exit_2(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    for extra, message in [(["--eval-fraction", "1"], "--eval-fraction must be in [0, 1)"),
                           (["--lr", "0"], "--lr must be a positive number"),
                           (["--output", str(tmp_path / "taken")], "is not an earlier train-rm output"),
                           (["--eval-fraction", "0.5"], "1 pair(s) are too few to hold out 50%")]:
        args = cli_args("--data", str(data), "--output", str(tmp_path / "rm"), *extra)
        assert rm_training.main(args) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


WORDS = ["red", "sun", "map", "cat", "tea", "box", "owl", "fig", "jar", "kit", "lot", "pen"]


def separable_pairs(n: int, seed: int = 0) -> list[dict]:
    """Chosen answers end in "good", rejected ones in "bad"; the rest is random words."""
    rng = random.Random(seed)

    def words(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [{"prompt": f"Rate {words(1)}", "chosen": f"{words(2)} good", "rejected": f"{words(2)} bad"}
            for _ in range(n)]


def test_train_rm_learns_separable_pairs(tiny_model, tmp_path, capsys):
    """From a causal LM with a new score head, held-out pairwise accuracy goes from about chance
    to 1.0; the saved folder loads in RewardModel, which ranks the same way."""
    pairs = separable_pairs(48)
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    out = tmp_path / "rm"
    args = cli_args("--data", str(data), "--output", str(out), "--model", tiny_model, "--epochs", "4",
                    "--lr", "3e-3", "--batch-size", "8", "--eval-fraction", "0.25", "--seed", "0")
    assert rm_training.main(args) == 0
    captured = capsys.readouterr()
    metrics = json.loads((out / "rm_metrics.json").read_text())
    assert metrics["pairs_train"] == 36 and metrics["pairs_eval"] == 12 and metrics["pairs_dropped"] == 0
    assert metrics["eval_pairwise_accuracy_after"] == 1.0
    assert 0.2 <= metrics["eval_pairwise_accuracy_before"] <= 0.8, metrics
    assert "held-out pairwise accuracy" in captured.out and "-> 100.0% (12 pairs)" in captured.out
    assert "loss" in captured.err

    _, held_out = rm_training.split_pairs(rm_training.read_pairs(data), 0.25, 0, str(data))
    rm = RewardModel(path=str(out), bf16=False)
    chosen = rm([p["chosen"] for p in held_out], prompts=[p["prompt"] for p in held_out])
    rejected = rm([p["rejected"] for p in held_out], prompts=[p["prompt"] for p in held_out])
    assert all(c > r for c, r in zip(chosen, rejected))


def test_train_rm_layout_is_the_reward_models(tmp_path):
    """TRL tokenizes train-rm's rows (chat messages; text + eos without a template) into the
    very ids RewardModel scores."""
    from trl.data_utils import _tokenize

    pair_text = {"line": 1, "prompt": "Rate it", "chosen": "fine good", "rejected": "no bad"}
    pair_chat = {"line": 2, "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
                 "chosen": [{"role": "assistant", "content": "A"}], "rejected": [{"role": "assistant", "content": "B"}]}
    tokenizer = make_char_tokenizer()
    for pair in (pair_text, pair_chat):
        [row] = rm_training.trl_rows([pair], chat=True, source="x")
        for side in ("chosen", "rejected"):
            completion = pair[side] if isinstance(pair[side], str) else pair[side][0]["content"]
            assert _tokenize(tokenizer, row[side])["input_ids"] == rm_input_ids(tokenizer, pair["prompt"], completion)
    tokenizer.chat_template = None
    [row] = rm_training.trl_rows([pair_text], chat=False, source="x")
    assert _tokenize(tokenizer, row["chosen"] + tokenizer.eos_token)["input_ids"] == rm_input_ids(
        tokenizer, "Rate it", "fine good")
    with pytest.raises(rm_training.TrainRMError, match="x, line 2: chat messages, but .* no chat template"):
        rm_training.trl_rows([pair_chat], chat=False, source="x")


def test_pairwise_accuracy_is_the_share_of_pairs_ranked_right(tiny_rm):
    """Pairs (high, low), (low, high), (high, low) in batches of 2: two of three are right."""
    import datasets
    from transformers import AutoModelForSequenceClassification

    tokenizer = make_char_tokenizer()
    a, b = (rm_input_ids(tokenizer, "Hi", text) for text in ("Hello!", "Bye"))
    high, low = (a, b) if direct_logit(tiny_rm, tokenizer.decode(a)) > direct_logit(tiny_rm, tokenizer.decode(b)) else (b, a)
    pairs = datasets.Dataset.from_list([{"chosen_ids": high, "rejected_ids": low},
                                        {"chosen_ids": low, "rejected_ids": high},
                                        {"chosen_ids": high, "rejected_ids": low}])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm)
    assert rm_training.pairwise_accuracy(model, pairs, PAD_ID, batch_size=2, bf16=False) == pytest.approx(2 / 3)


@pytest.mark.slow
def test_reward_model_in_a_training_run(tiny_model, tiny_rm, tmp_path):
    """``rewards.functions`` names RewardModel beside a rule reward: the run attaches it, scores
    every row with it and logs its statistics (about 10 s: a 2-step run in a child process)."""
    from conftest import run_cli, tiny_overrides

    rm = f"{{fn: 'rewards.rm:RewardModel', name: rm, weight: 0.5, kwargs: {{path: {tiny_rm}, normalize: batch}}}}"
    digit = "{fn: 'rlkit.testing_rewards:contains_char', name: digit, kwargs: {chars: '0123456789'}}"
    run = run_cli(tiny_overrides(tiny_model, train__steps=2) + [f"rewards.functions=[{digit}, {rm}]"],
                  tmp_path / "run")
    assert run.returncode == 0, run.describe()
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if s.strip()]
    train = [m for m in lines if m["kind"] == "train"]
    assert len(train) == 2
    for m in train:
        assert m["rm/scored_rows"] == 8.0 and m["rm/failed_rows"] == 0.0 and m["reward/failures"] == 0.0
        assert m["reward/rm"] == pytest.approx(0.0, abs=1e-6)  # z-scored over the batch
        assert m["reward/mean"] == pytest.approx(m["reward/digit"], abs=1e-6)  # 0.5 * mean 0 + digit
