"""RubricJudge (rewards/judge.py; spec section 8, MPO's judge): rubric checks, the score parser
(variations, JSON, fuzzing with random bytes and unicode), a tiny random model as the judge
(garbage replies never crash) and clients given by import string.  The OpenAI-compatible HTTP
client against a real local server: tests/test_judge_http.py."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import time

import pytest

from rewards.judge import (
    DEFAULT_RUBRIC,
    JudgeError,
    Rubric,
    RubricJudge,
    judge_messages,
    make_client,
    parse_scores,
    prompt_text,
)

RUBRIC = Rubric.from_list([
    {"id": "task_fit", "description": "Does what was asked.", "min": 0, "max": 5},
    {"id": "language", "description": "Fluent and grammatical.", "min": 0, "max": 5},
    {"id": "craft", "description": "Vivid wording.", "min": 1, "max": 10},
])
GOOD_REPLY = "task_fit: 4 - on topic\nlanguage: 3 - a few slips\ncraft: 7 - some images"


# ------------------------------------------------------------------------------------ rubrics

def test_rubric_round_trip_and_totals():
    assert Rubric.from_list(RUBRIC.to_list()) == RUBRIC
    assert RUBRIC.max_total == 20 and RUBRIC.min_total == 1
    assert RUBRIC.format().splitlines()[2] == "- craft (1-10): Vivid wording."
    assert Rubric.from_list([{"id": "Task Fit!", "description": "x  y", "min": 0, "max": 2}]).items[0].id == "task_fit"


@pytest.mark.parametrize("items, message", [
    ([], "non-empty list"),
    ([{"id": "a", "description": "d", "min": 3, "max": 3}], "rubric[0]: min (3) must be below max"),
    ([{"id": "a", "description": "d", "max": "5"}], "rubric[0].max"),
    ([{"id": "", "description": "d"}], "rubric[0].id"),
    ([{"id": "a", "description": "d", "weight": 2}], "unknown keys ['weight']"),
    ([{"id": "a", "description": "d"}, {"id": "A", "description": "e"}], "repeated: ['a']"),
])
def test_rubric_errors_name_the_item(items, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        Rubric.from_list(items)


# ------------------------------------------------------------------------------------ parser

@pytest.mark.parametrize("reply, scores, missing", [
    (GOOD_REPLY, [4, 3, 7], 0),
    ("**task_fit**: 4/5 - fits\n- **Language** (0-5): **3.0** — fine\n3. craft = 7 out of 10", [4, 3, 7], 0),
    ("  TASK FIT :  4.5\n\nlanguage:5\ncraft: 2/5", [4.5, 5, 1 + 2 / 5 * 9], 0),          # 2/5 of craft's 1-10
    ("task_fit: 9 - too high\nlanguage: -2\ncraft: 0", [5, 0, 1], 0),                       # clamped to the ranges
    ("task_fit: 60%\nlanguage: 100 %\ncraft: 0%", [3, 5, 1], 0),                            # percentages of the range
    ("task_fit: 0-5\nlanguage: (1 to 5)\ncraft: 4 - 5 images", [0, 0, 4], 2),              # echoed ranges
    ("Task fit - 3/5 - close\nlanguage \u2013 4\ncraft-ish - 9", [3, 4, 1], 1),                # " - " separators
    ("task_fit: <score 0-5> - <rationale>\nlanguage: n/a\ncraft:", [0, 0, 1], 3),           # echoed template
    ("task_fit: 2\ntask_fit: 5\nlanguage: 1", [2, 1, 1], 1),                                # the first line wins
    ("Here is my grading:\n`craft`: 8 points. Nice.\nunknown_item: 4", [0, 0, 8], 2),
    ("", [0, 0, 1], 3),
])
def test_parse_scores_variations(reply, scores, missing):
    judgement = parse_scores(reply, RUBRIC)
    assert judgement.scores == pytest.approx(scores)
    assert judgement.missing == missing


def test_parse_scores_rationales():
    judgement = parse_scores(GOOD_REPLY, RUBRIC)
    assert judgement.rationales == ["on topic", "a few slips", "some images"]
    assert judgement.total == 14


def test_parse_scores_json_forms():
    reply = 'Sure! {"task_fit": 4, "language": {"score": "3/5", "rationale": "ok"}, "craft": "x"} done'
    judgement = parse_scores(reply, RUBRIC)
    assert judgement.scores == [4, 3, 1] and judgement.missing == 1 and judgement.rationales[1] == "ok"
    listed = parse_scores('[{"id": "craft", "score": 9, "rationale": "r"}, {"id": "language", "score": 2}]', RUBRIC)
    assert listed.scores == [0, 2, 9] and listed.missing == 1
    wrapped = parse_scores('{"scores": {"task_fit": 5, "language": 5, "craft": 10}}', RUBRIC)
    assert wrapped.scores == [5, 5, 10] and wrapped.missing == 0


def _check(judgement, rubric=RUBRIC):
    assert len(judgement.scores) == len(rubric.items) == len(judgement.rationales)
    assert 0 <= judgement.missing <= len(rubric.items)
    for score, item in zip(judgement.scores, rubric.items):
        assert isinstance(score, float) and item.min <= score <= item.max


def test_parser_never_raises_on_random_bytes_and_unicode():
    rng = random.Random(1234)
    pieces = ["task_fit", "language", "craft", ":", "=", "/", "-", " ", "\n", "**", "`", "{", "}", "[", "]", '"',
              "score", "rationale", "1e308", "nan", "inf", "-0", "4", "5.5", "999999999999999999999", "out of", "(",
              ")", "\u2014", "\u00e9", "\U0001f600", "\x00", "\ufffd", "\\", ",", "#", ">", "1.", "a)"]
    for case in range(1500):
        kind = case % 3
        if kind == 0:
            text = bytes(rng.randrange(256) for _ in range(rng.randrange(200))).decode("utf-8", errors="replace")
        elif kind == 1:
            chars = (chr(rng.randrange(0x110000)) if rng.random() < 0.9 else "\n" for _ in range(rng.randrange(200)))
            text = "".join(chars)
            text = text.encode("utf-8", errors="replace").decode("utf-8", errors="replace")
        else:
            text = "".join(rng.choice(pieces) for _ in range(rng.randrange(80)))
        _check(parse_scores(text, RUBRIC))
    for odd in (None, b"\xff\xfe task_fit: 3", 42, "[" * 30000, "{" * 5000 + "}", "task_fit: " + "9" * 5000,
                "\n".join(["task_fit: 4"] * 100000), '{"task_fit": 1e999}', '{"task_fit": 10' + "0" * 400 + "}"):
        _check(parse_scores(odd, RUBRIC))


def test_parse_scores_on_huge_reply_is_fast():
    started = time.perf_counter()
    _check(parse_scores("[{" * 50000 + " task_fit : 4 /" * 10000, RUBRIC))
    assert time.perf_counter() - started < 5


# ------------------------------------------------------------------------------------ prompts

def test_judge_prompt_lists_items_and_format():
    messages = judge_messages(RUBRIC, "Write a haiku.", "x" * 5000, max_chars=100)
    user = messages[-1]["content"]
    assert messages[0]["role"] == "system" and "Write a haiku." in user
    assert "- craft (1-10): Vivid wording." in user and "craft: <score 1-10> - <rationale>" in user
    assert "x" * 100 + " [...]" in user and "x" * 101 not in user
    assert prompt_text([{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                        {"role": "assistant", "content": "a"}, {"role": "user", "content": "u2"}]) == "u2"


# ------------------------------------------------------------------------------------ judges with stub clients

class CannedClient:
    """A client that answers every prompt with ``reply`` (None: the row failed) and records the prompts."""

    def __init__(self, reply=GOOD_REPLY):
        self.reply, self.prompts = reply, []

    def generate(self, prompts, max_tokens, temperature):
        self.prompts.extend(prompts)
        return [self.reply(p) if callable(self.reply) else self.reply for p in prompts]


def canned_function(prompts, max_tokens, temperature):
    return [GOOD_REPLY for _ in prompts]


def test_judge_sums_items_and_reports_metrics():
    client = CannedClient()
    judge = RubricJudge(rubric=RUBRIC.to_list(), client=client)
    assert judge(["a", "b"], prompts=["Write A", [{"role": "user", "content": "Write B"}]], answer=[None, None]) == [
        14.0, 14.0]
    assert "Write B" in client.prompts[1][-1]["content"]
    assert judge.update(None) == {"parse_failures": 0.0, "failed_rows": 0.0, "judged_rows": 2.0,
                                  "parse_failure_rate": 0.0, "rubric_items": 3.0, "max_score": 20.0}
    normalized = RubricJudge(rubric=RUBRIC.to_list(), client=CannedClient(), normalize=True)
    assert normalized(["a"]) == [pytest.approx(0.7)]


def test_judge_counts_parse_failures():
    judge = RubricJudge(rubric=RUBRIC.to_list(), client=CannedClient("task_fit: 2\n!!garbage!!"))
    assert judge(["a", "b", "c"]) == [3.0, 3.0, 3.0]   # craft missing -> its min (1)
    metrics = judge.update(None)
    assert metrics["parse_failures"] == 6 and metrics["parse_failure_rate"] == pytest.approx(6 / 9)
    assert judge.update(None)["parse_failures"] == 0    # reset after each update


def test_judge_client_by_import_string():
    judge = RubricJudge(rubric=RUBRIC.to_list(), client="test_judge:canned_function")
    assert judge(["x"]) == [14.0]
    judge = RubricJudge(rubric=RUBRIC.to_list(), client="test_judge:CannedClient", reply="task_fit: 5")
    assert judge(["x"]) == [6.0]
    with pytest.raises(ValueError, match="unknown judge client 'gpt'"):
        make_client("gpt")
    with pytest.raises(ValueError, match="judge client 'hf'"):
        make_client("hf", model="m", bogus_option=1)


class BrokenClient:
    name = "broken-judge"

    def generate(self, prompts, max_tokens, temperature):
        raise ConnectionError("engine is gone")


class ShortClient:
    def generate(self, prompts, max_tokens, temperature):
        return ["task_fit: 1"]


def test_judge_on_error_raise_and_none():
    with pytest.raises(JudgeError, match="broken-judge failed: ConnectionError: engine is gone"):
        RubricJudge(client=BrokenClient())(["a"])
    judge = RubricJudge(client=BrokenClient(), on_error="none")
    assert judge(["a", "b"]) == [None, None]
    assert judge.update(None)["failed_rows"] == 2
    partial = RubricJudge(rubric=RUBRIC.to_list(), client=CannedClient(lambda p: None if "bad" in str(p) else
                                                                        GOOD_REPLY))
    assert partial(["good", "bad"]) == [14.0, None]
    with pytest.raises(JudgeError, match="returned 1 replies for 2 prompts"):
        RubricJudge(client=ShortClient())(["a", "b"])


def test_judge_error_stops_a_combined_reward():
    """A JudgeError is a RewardError: CombinedReward stops instead of failing row by row."""
    from rewards import combine

    reward = combine(judge=RubricJudge(client=BrokenClient()))
    with pytest.raises(JudgeError, match="broken-judge"):
        reward.score(["a"], prompts=["p"])


# ------------------------------------------------------------------------------------ a tiny random model as judge

def test_tiny_model_judge_garbage_never_crashes(tiny_model, one_thread):
    import torch

    judge = RubricJudge(rubric=RUBRIC.to_list(), client="hf", model=tiny_model, max_tokens=24, temperature=1.0,
                        batch_size=4)
    completions = ["A poem about rain.", "", "\u00e9\u00e8 \U0001f600 unicode", "x" * 2000, "task_fit: 5"]
    before = torch.get_rng_state()
    scores = judge(completions, prompts=["Write a poem."] * len(completions))
    assert torch.equal(before, torch.get_rng_state())          # the trainer's RNG is untouched
    assert len(scores) == len(completions)
    for score, judgement in zip(scores, judge.last):
        assert isinstance(score, float) and RUBRIC.min_total <= score <= RUBRIC.max_total
        assert score == judgement.total
    metrics = judge.update(None)
    assert metrics["judged_rows"] == 5 and 0 <= metrics["parse_failures"] <= 15
    greedy = RubricJudge(rubric=RUBRIC.to_list(), client="hf", model=tiny_model, max_tokens=8)
    assert greedy(["same"] * 2) == greedy(["same"] * 2)


VLLM_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    def main():
        import torch
        from rewards.judge import RubricJudge
        from rewards.mpo import MetaReward
        judge = RubricJudge(client="vllm", model=sys.argv[1], dtype="float32", gpu_memory_utilization=0.02,
                            max_model_len=512, max_tokens=16, constrained=False)
        torch.manual_seed(7)
        before = torch.get_rng_state()
        scores = judge(["a poem", "\\u00e9 garbage"], prompts=["Write a poem."] * 2)
        same = bool(torch.equal(before, torch.get_rng_state()))
        again = judge(["a poem", "\\u00e9 garbage"], prompts=["Write a poem."] * 2)
        free_failures = judge.metrics()["parse_failures"]
        judge.close()
        # constrained decoding (the default for vllm): a random model still answers in the format,
        # as judge and as meta model (one engine for both)
        rubric = [{"id": "fit", "description": "Does what was asked.", "min": 0, "max": 5},
                  {"id": "style", "description": "Reads well.", "min": 1, "max": 3}]
        mpo = MetaReward(rubric=rubric, client="vllm", model=sys.argv[1], dtype="float32",
                         gpu_memory_utilization=0.02, max_model_len=512, max_tokens=48, rationale_chars=6,
                         temperature=1.0, every=1, sample_size=3, max_items=3, meta_max_tokens=200,
                         meta_temperature=1.0, meta_analysis_chars=20, meta_item_chars=20)
        texts = ["a poem", "\\u00e9 garbage", "x" * 300]
        judged = mpo(texts, prompts=["Write a poem."] * 3)
        sampled = mpo.judge.client.generate(["Say something."] * 4, 12, 1.0)
        judge_metrics = mpo.judge.metrics(reset=False)
        step = mpo.update(None)
        mpo.close()
        print("RESULT " + json.dumps({"scores": scores, "again": again, "rng_kept": same,
                                      "free_failures": free_failures, "constrained": mpo.judge.constrained,
                                      "judged": judged, "constrained_failures": judge_metrics["parse_failures"],
                                      "meta_invalid": step["meta_invalid"], "version": step["rubric_version"],
                                      "items": step["rubric_items"], "sampled": sampled}))

    if __name__ == "__main__":
        main()
""")


def test_vllm_judge_client_in_process(tiny_model, tmp_path):
    """The in-process vLLM client (a child process: vLLM on CPU wants a guarded __main__)."""
    from conftest import REPO_ROOT, subprocess_env

    script = tmp_path / "vllm_judge.py"
    script.write_text(VLLM_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), tiny_model], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert len(result["scores"]) == 2 and all(0 <= s <= RUBRIC.max_total for s in result["scores"])
    assert result["scores"] == result["again"]          # greedy
    assert result["rng_kept"]                           # creating the engine did not reseed the trainer
    assert result["free_failures"] > 0                  # unconstrained, a random model misses the format
    assert result["constrained"] and result["constrained_failures"] == 0
    assert all(0 <= s <= 8 for s in result["judged"])
    assert result["meta_invalid"] == 0                  # three refined rubrics, all readable
    assert result["version"] == 1 and 2 <= result["items"] <= 3
    assert len(set(result["sampled"])) > 1              # rows of one call sample different text


def test_judge_regex_matches_well_formed_replies_only():
    import re

    from rewards.judge import judge_regex

    pattern = judge_regex(RUBRIC, max_tokens=96)
    assert re.fullmatch(pattern, GOOD_REPLY + "\n")
    assert parse_scores(GOOD_REPLY, RUBRIC).missing == 0
    for bad in (GOOD_REPLY,                                         # no final newline
                "task_fit: 6 - too high\nlanguage: 3 - a\ncraft: 7 - b\n",  # out of range
                "craft: 7 - b\ntask_fit: 4 - a\nlanguage: 3 - a\n",      # order
                "task_fit: 4 -\nlanguage: 3 - a\ncraft: 7 - b\n",        # empty rationale
                "task_fit: 4 - a\nlanguage: 3 - a\ncraft: 7 - 5 b\n"):   # a rationale starts with a letter
        assert not re.fullmatch(pattern, bad), bad
    short = judge_regex(RUBRIC, max_tokens=96, rationale_chars=3)
    assert not re.fullmatch(short, GOOD_REPLY + "\n")              # "on topic" is longer than 3
    decimal = Rubric.from_list([{"id": "q", "description": "Quality.", "min": 0.5, "max": 2.5}])
    assert re.fullmatch(judge_regex(decimal, 32), "q: 1.25 - fine\n")
    rng = random.Random(3)
    for _ in range(300):  # every reply the expression admits scores every item
        reply = "".join(f"{item.id}: {rng.randint(int(item.min), int(item.max))} - "
                        f"{rng.choice('aZ')}{''.join(rng.choice('ab:-1 ') for _ in range(rng.randint(0, 20)))}\n"
                        for item in RUBRIC.items)
        assert re.fullmatch(pattern, reply)
        assert parse_scores(reply, RUBRIC).missing == 0, reply


def test_constrained_option_is_checked_against_the_client():
    judge = RubricJudge(rubric=RUBRIC.to_list(), client=CannedClient())
    assert judge.constrained is False                   # auto: only an in-process vLLM engine
    with pytest.raises(ValueError, match="constrained=true needs a client"):
        RubricJudge(rubric=RUBRIC.to_list(), client=CannedClient(), constrained=True)
    with pytest.raises(ValueError, match="constrained must be auto, true or false"):
        RubricJudge(rubric=RUBRIC.to_list(), client=CannedClient(), constrained="yes")


def test_default_rubric_is_valid():
    assert len(DEFAULT_RUBRIC.items) == 3 and DEFAULT_RUBRIC.max_total == 15
