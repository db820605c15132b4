"""``rlkit reward-check``: real rewards (math, SQL on real SQLite, ToolRL) on references,
perturbations and degenerate outputs; loose checkers from tests/helpers/loose_rewards.py must be
caught, bad input must be one line and exit 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlkit.cli import main
from rlkit.reward_check import load_rows
from rlkit.reward_check.perturb import PERTURBERS, MathPerturber, ToolCallPerturber
from rlkit.reward_check.report import check_reward, format_report
from rlkit.tasks.toolcall import toolrl_row

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
LOOSE = "helpers.loose_rewards"

MATH_ROWS = [
    {"question": "Tom has 3 boxes with 4 pens each. He gives away 2 pens. How many pens are left?",
     "answer": "Tom has 3*4 = <<3*4=12>>12 pens.\nAfter giving away 2 he has 12-2 = <<12-2=10>>10 pens.\n#### 10"},
    {"question": "A farm doubles its 35000 eggs. How many eggs does it have?",
     "answer": "The farm has 35000*2 = <<35000*2=70000>>70000 eggs.\n#### 70000"},
    {"question": "One apple costs $0.5. How much do 5 apples cost?",
     "answer": "5 apples cost 5*0.5 = <<5*0.5=2.5>>2.5 dollars.\n#### 2.5"},
    {"question": "A shop sells 250 cups a day. How many cups does it sell in 5 days?",
     "answer": "It sells 250*5 = <<250*5=1250>>1250 cups.\n#### 1,250"},
    {"question": "Sam had 7 marbles and lost 7. How many are left?", "answer": "He has 7-7 = <<7-7=0>>0 left.\n#### 0"},
    {"question": "Write the number 42.", "answer": "42"},
]


@pytest.fixture
def cli(capsys):
    def run(*args):
        code = main(["reward-check", *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def math_file(tmp_path):
    path = tmp_path / "gsm8k_small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MATH_ROWS))
    return path


@pytest.fixture
def demo_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLKIT_CACHE", str(tmp_path / "cache"))  # the sql_demo database is built there


def _kinds(path):
    return json.loads(Path(path).read_text())["kinds"]


# ---- math ------------------------------------------------------------------------------------

def test_math_correctness_has_no_holes_on_a_written_file(cli, math_file, tmp_path):
    out_json = tmp_path / "report.json"
    code, out, err = cli("rewards.math:correctness", "--data", math_file, "--strict", "--json", out_json)
    assert code == 0, out + err
    assert out.strip().splitlines()[-1] == "no holes"
    assert "every reference scores the maximum" in out
    report = json.loads(out_json.read_text())
    assert report["rows_checked"] == 6 and report["references"]["min"] == 1.0
    kinds = report["kinds"]
    # hand-counted: gold 0 has no negation / x10; drop_digit needs an integer >= 10; the bare "42"
    # row has no working (no intermediate number), and its prompt's last number is 42 (echo dropped)
    expected_rows = {"perturb/plus_one": 6, "perturb/minus_one": 6, "perturb/negated": 5, "perturb/times_ten": 5,
                     "perturb/drop_digit": 4, "perturb/last_intermediate": 5, "degenerate/prompt_echo": 5,
                     "degenerate/empty": 6}
    assert {k: kinds[k]["rows"] for k in expected_rows} == expected_rows
    assert all(k["mean"] == 0.0 for name, k in kinds.items() if k["class"] == "wrong")
    assert kinds["degenerate/unformatted_answer"]["mean"] == 1.0  # the bare right answer: a tie, no hole


@pytest.mark.skipif(not GSM8K.is_file(), reason="../shared/data/gsm8k absent")
def test_math_correctness_has_no_holes_on_30_gsm8k_rows(cli):
    code, out, err = cli("rewards.math:correctness", "--data", GSM8K, "--limit", 30, "--strict")
    assert code == 0, out + err
    assert "30 rows checked" in out and out.strip().endswith("no holes")


def test_math_correctness_leading_dot_decimal(tmp_path):
    """reward-check found this hole on 7 of 7473 GSM8K rows: ``extract_answer`` read ".4" as 4, so
    "#### .4" scored 1 against the gold 4 (the last intermediate number of the solution)."""
    from rewards.math import correctness, extract_answer

    assert extract_answer("#### .4") == ".4" and extract_answer("it costs $.5 each") == ".5"
    assert correctness(["#### .4", "#### 0.4", "#### 4"], ["4", "0.4", "4"]) == [0.0, 1.0, 1.0]

    rows = [(0, {"prompt": "Ten champions, 40% with beards: how many?", "answer": "10 x .4 = <<10*.4=4>>4\n#### 4"})]
    report = check_reward(correctness, rows, PERTURBERS["math"])
    assert report["holes"] == 0, format_report(report)


def test_wrong_variants_really_change_the_answer():
    p = MathPerturber()
    row = {"prompt": "q", "answer": "7-7 = <<7-7=0>>0\n#### 0"}
    kinds = dict(p.perturb(row, p.reference(row)))
    assert "negated" not in kinds and "times_ten" not in kinds  # -0 and 0*10 are still 0
    assert kinds["plus_one"].endswith("#### 1") and kinds["last_intermediate"].endswith("#### 7")
    assert p.still_right(row, "so #### 0.0") and not p.still_right(row, "#### .0001")


# ---- loose checkers ----------------------------------------------------------------------------

def test_contains_gold_checker_is_caught(cli, math_file, tmp_path):
    out_json = tmp_path / "r.json"
    code, out, err = cli(f"{LOOSE}:contains_gold", "--data", math_file, "--strict", "--examples", 2, "--json", out_json)
    assert code == 1, out + err
    kinds = _kinds(out_json)
    # the working of rows 0-4 contains the gold number, so a changed final answer still "contains" it
    assert kinds["perturb/plus_one"]["holes"] == 5 and len(kinds["perturb/plus_one"]["examples"]) == 2
    assert "  perturb/plus_one: 5 of 6 rows" in out
    assert "    row 0: score 1 vs reference 1: Tom has 3*4" in out
    assert out.strip().splitlines()[-1].endswith("kinds") and "holes in" in out.strip().splitlines()[-1]


def test_near_gold_checker_is_caught(cli, math_file, tmp_path):
    out_json = tmp_path / "r.json"
    code, out, _ = cli(f"{LOOSE}:near_gold", "--data", math_file, "--json", out_json)
    assert code == 0  # without --strict the findings do not fail the command
    kinds = _kinds(out_json)
    assert kinds["perturb/plus_one"]["holes"] == 6 and kinds["perturb/minus_one"]["holes"] == 6
    assert kinds["perturb/times_ten"]["holes"] == 0


def test_constant_reward_is_reference_not_rewarded(cli, math_file):
    code, out, _ = cli(f"{LOOSE}:always_one", "--data", math_file, "--strict")
    assert code == 1
    assert "reference not rewarded on 6 rows" in out
    assert out.strip().splitlines()[-1] == "no holes (6 references not rewarded)"


def test_padding_bonus_is_a_hole_of_the_same_answer_kinds(cli, math_file, tmp_path):
    out_json = tmp_path / "r.json"
    code, out, _ = cli(f"{LOOSE}:longer_is_better", "--data", math_file, "--strict", "--json", out_json)
    kinds = _kinds(out_json)
    assert code == 1
    assert kinds["degenerate/long_output"]["holes"] == 6 and kinds["degenerate/answer_repeated"]["holes"] == 6
    assert kinds["perturb/plus_one"]["holes"] == 0


def test_reward_failures_are_counted_not_fatal(cli, math_file, tmp_path):
    out_json = tmp_path / "r.json"
    code, out, err = cli(f"{LOOSE}:fragile", "--data", math_file, "--json", out_json)
    assert code == 0, out + err
    report = json.loads(out_json.read_text())
    assert report["kinds"]["degenerate/empty"]["failed"] == 6  # raised on every empty completion
    assert report["kinds"]["degenerate/long_output"]["unscored"] == 6  # None on every long one
    assert "6 outputs raised or timed out, 6 returned None" in out and "ValueError: empty completion" in out


def test_custom_perturber(cli, tmp_path):
    path = tmp_path / "words.jsonl"
    path.write_text('{"text": "say cat", "answer": "cat"}\n{"text": "say dog", "answer": "dog"}\n')
    code, out, err = cli(f"{LOOSE}:exact_word", "--data", path, "--perturber", f"{LOOSE}:WordPerturber", "--strict")
    assert code == 1, out + err
    assert "perturb/upper_case: 2 of 2 rows" in out and "perturb/other_word" in out
    assert out.strip().splitlines()[-1] == "2 holes in 1 kinds"


# ---- SQL (real SQLite: the built-in shop database) ----------------------------------------------

def test_sql_execution_accuracy_and_sqlreward(cli, demo_cache, tmp_path):
    for reward in ("rewards.sql:execution_accuracy", "rewards.sql:SQLReward"):
        out_json = tmp_path / "sql.json"
        code, out, err = cli(reward, "--data", "sql_demo", "--limit", 40, "--strict", "--json", out_json)
        report = json.loads(out_json.read_text())
        assert code == 0, out + err
        assert out.strip().splitlines()[-1] == "no holes"
        refs = report["references"]
        best = 1.0 if reward.endswith("accuracy") else 7.0  # 3 + 1 + 1 + 1 + 1: every partial but the judge
        assert refs["min"] == refs["max"] == best and not refs["below_max"]
        perturbed = {k: v for k, v in report["kinds"].items() if k.startswith("perturb/")}
        assert sum(v["rows"] for v in perturbed.values()) >= 100
        if best == 7.0:  # partial rewards: below the reference, above nothing
            assert all(0.0 < v["mean"] < 7.0 for v in perturbed.values())
        else:
            assert all(v["mean"] == 0.0 for v in perturbed.values())


def test_sql_perturbations_change_the_result(demo_cache):
    from rewards.sql import execution_match

    _, rows = load_rows("sql_demo")
    p = PERTURBERS["sql"]
    row = next(r for r in rows if r["gold_sql"].endswith("ORDER BY price DESC LIMIT 1"))
    assert {"drop_where", "drop_limit", "flip_order", "change_literal", "swap_column"} <= {
        k for k, _ in p.perturb(row, p.reference(row))}
    for row in rows[:30]:  # e.g. count(DISTINCT age) equals count(*) where every age differs: dropped
        for kind, text in p.perturb(row, p.reference(row)):
            assert not execution_match(text.split("```sql\n")[1][:-4], row["gold_sql"], row["db_path"]), kind


# ---- tool calls ----------------------------------------------------------------------------------

TOOLS = ("**Available Tools**\n1. Name: get_weather\nDescription: Weather\nParameters: "
         '{"city": {"type": "string"}, "unit": {"type": "string"}}\n2. Name: get_time\nDescription: Time\n'
         'Parameters: {"zone": {"type": "string"}}\n\n**Format**\n')
TOOL_ROWS = [
    {"instruction": TOOLS, "input": "Weather in Paris in C?",
     "output": '<think>weather</think>\n<tool_call>\n{"name": "get_weather", "parameters": {"city": "Paris", '
               '"unit": "C"}}\n</tool_call>'},
    {"instruction": TOOLS, "input": "Weather and time in Oslo?",
     "output": '<think>both</think>\n<tool_call>\n{"name": "get_weather", "parameters": {"city": "Oslo"}}\n'
               '{"name": "get_time", "parameters": {"zone": "CET"}}\n</tool_call>'},
    {"instruction": TOOLS, "input": "Hi!", "output": "<think>greet</think>\n<response>Hello!</response>"},
]


@pytest.fixture
def tool_file(tmp_path):
    path = tmp_path / "toolrl.json"
    path.write_text(json.dumps(TOOL_ROWS))
    return path


def test_toolrl_rewards(cli, tool_file, tmp_path):
    out_json = tmp_path / "t.json"
    code, out, err = cli("rewards.toolrl:ToolRLReward", "--data", tool_file, "--strict", "--json", out_json)
    assert code == 0, out + err
    report = json.loads(out_json.read_text())
    # format 1 + correctness 3 on the call rows; format 1 + correctness 0 on the response-only row
    assert report["references"]["group_max"] == {"think+tool_call": 4.0, "think+response": 1.0}
    kinds = report["kinds"]
    assert kinds["perturb/reordered_calls"]["class"] == "same answer"
    assert kinds["perturb/reordered_calls"]["mean"] == 4.0  # order-free: a tie, not a hole
    assert kinds["perturb/drop_call"]["rows"] == 1 and kinds["perturb/drop_param"]["rows"] == 2
    assert out.strip().splitlines()[-1] == "no holes"
    code, out, err = cli("rewards.toolrl:exact_call", "--data", tool_file, "--json", out_json)
    report = json.loads(out_json.read_text())
    assert code == 0 and out.strip().splitlines()[-1].startswith("no holes")
    assert report["references"]["not_rewarded"] == [2]  # exact_call gives a response-only row 0


def test_toolcall_perturbation_scores_by_hand():
    from rewards.toolrl import toolrl_reward

    row = toolrl_row(TOOL_ROWS[0])
    p = ToolCallPerturber()
    ref = p.reference(row)
    kinds = dict(p.perturb(row, ref))
    # drop "city": names 1 + keys |{unit}|/|{city, unit}| = 0.5 + equal values 1 -> 2.5 of S_max 4:
    # correctness 6 * 2.5 / 4 - 3 = 0.75, format 1
    assert toolrl_reward(kinds["drop_param"], ref) == {"format": 1.0, "correctness": 0.75, "total": 1.75}
    assert '"city": "Paris_x"' in kinds["change_value"] and '"name": "get_time"' in kinds["rename_tool"]


# ---- command line --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["no_such_module:fn", "--data", "{math}"], "reward 'no_such_module:fn'"),
    (["rewards.math:no_such_fn", "--data", "{math}"], "rewards.math:no_such_fn"),
    (["rewards.math:correctness", "--data", "{missing}"], "file not found"),
    (["rewards.math:correctness", "--data", "{math}", "--kwargs", "{bad"], "--kwargs"),
    (["rewards.sql:SQLReward", "--data", "{math}", "--kwargs", '{"nope": 1}'], "--kwargs"),
    (["rewards.math:correctness", "--data", "{odd}"], "--task"),
])
def test_bad_input_is_one_line_and_exit_2(cli, math_file, tmp_path, args, needle):
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"x": 1}\n')
    paths = {"math": math_file, "missing": tmp_path / "nope.jsonl", "odd": odd}
    code, out, err = cli(*[a.format(**paths) if a.startswith("{") and a[1:-1] in paths else a for a in args])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_command_line_process(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "rlkit.cli", "reward-check", "rewards.math:correctness",
                           "--data", str(tmp_path / "missing.jsonl")], cwd=repo, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"rlkit reward-check: --data: file not found: {tmp_path / 'missing.jsonl'}"
