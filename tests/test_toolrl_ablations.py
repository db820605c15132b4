"""The ToolRL ablation switches: ``ToolRLReward(correctness_mode="exact")`` (the paper's coarse
reward) and the BFCL AST check as a reward component (``rlkit.eval.toolcall_ast.ast_call_accuracy``),
which the ToolRL config reports as held-out accuracy."""
from __future__ import annotations

import json

import pytest

from rewards.toolrl import ToolRLReward

WEATHER = ("get_weather", {"city": "Paris", "unit": "C"})
RESPONSE_ONLY = "<think>just answer</think>\n<response>Hello!</response>"


def tc(*calls: tuple[str, dict], response: str | None = None, think: str = "reasoning") -> str:
    lines = "\n".join(json.dumps({"name": n, "parameters": p}) for n, p in calls)
    text = f"<think>{think}</think>\n<tool_call>\n{lines}\n</tool_call>"
    return text + (f"\n<response>{response}</response>" if response is not None else "")


def test_module_exact_correctness_mode():
    gt = tc(WEATHER)
    partly = tc(("get_weather", {"city": "Paris", "unit": "F"}))   # fine-grained correctness 1.5
    fine, exact = ToolRLReward(), ToolRLReward(correctness_mode="exact")
    assert fine([partly, tc(WEATHER)], ground_truth=[gt, gt]) == [pytest.approx(2.5), 4.0]
    assert exact([partly, tc(WEATHER), "oops"], ground_truth=[gt] * 3) == [-2.0, 4.0, -3.0]  # format 1 + (-3)
    assert exact.update(None) == {"format": pytest.approx(2 / 3), "correctness": pytest.approx(-1.0)}
    scaled_exact = ToolRLReward(correctness_mode="exact", dynamic_scaling=True)
    assert scaled_exact([partly], ground_truth=[gt]) == [pytest.approx(2.0 - 2.0)]       # step 0: format 2, -3 -> -2
    with pytest.raises(ValueError, match="correctness_mode"):
        ToolRLReward(correctness_mode="coarse")


def test_ast_call_accuracy_component_is_the_eval_check():
    """BFCL's AST rules, unlike the exact match: strings compared normalised, the think/response
    layout free, an int for a float parameter taken; wrong values, missing calls and undeclared
    reference parameters as ``rlkit eval`` has them."""
    from rlkit.eval.toolcall_ast import ast_call_accuracy

    tools = [{"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string"}, "days": {"type": "float"}}}}]
    reference = tc(("get_weather", {"city": "New York", "unit": "C", "days": 2.0}))
    completions = [reference,
                   tc(("get_weather", {"city": "new york", "unit": "C", "days": 2})),     # normalised, int as float
                   tc(("get_weather", {"city": "New York", "unit": "C", "days": 2.0}), response="ok"),
                   tc(("get_weather", {"city": "Boston", "unit": "C", "days": 2.0})),       # wrong value
                   tc(("get_weather", {"city": "New York", "unit": "C"})),                  # missing parameter
                   "<think>no call</think>"]
    out = ast_call_accuracy(completions, ground_truth=[reference] * 6, tools=[tools] * 6)
    assert out == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    undeclared = tc(("get_weather", {"city": "Paris", "zone": "x"}))
    assert ast_call_accuracy([undeclared, "x"], ground_truth=[undeclared, None], tools=[tools, tools]) == [None, None]
    assert ast_call_accuracy([RESPONSE_ONLY, tc(WEATHER)], ground_truth=[RESPONSE_ONLY] * 2) == [1.0, 0.0]
    with pytest.raises(ValueError, match="ground_truth"):
        ast_call_accuracy(["x"])


RLLA_SFT = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "toolrl" / "rlla_sft.json"


@pytest.mark.skipif(not RLLA_SFT.exists(), reason="needs ../shared/data/toolrl/rlla_sft.json")
def test_ast_call_accuracy_agrees_with_rlkit_eval_on_the_toolrl_sample():
    """The training-time accuracy and ``rlkit eval --benchmark toolcall`` judge the same rows the
    same way: the references, and the references with their first value changed."""
    from rlkit.eval.benchmarks import judge, load_benchmark
    from rlkit.eval.toolcall_ast import ast_call_accuracy
    from rlkit.tasks.toolcall import load_tool_rows

    rows = load_tool_rows(RLLA_SFT)[:60]
    bench = load_benchmark("toolcall", RLLA_SFT, limit=60)
    completions = []
    for row in rows:
        text = row["ground_truth"]
        completions.append([text, text.replace('": "', '": "x', 1)])
    verdicts = judge("toolcall", bench, completions)
    ours = [ast_call_accuracy(pair, ground_truth=[row["ground_truth"]] * 2, tools=[row["tools"]] * 2)
            for pair, row in zip(completions, rows)]
    theirs = [[None if v["correct"] is None else float(v["correct"]) for v in row] for row in verdicts]
    assert ours == theirs
    flat = [v for pair in ours for v in pair]
    assert flat.count(1.0) > 30 and flat.count(0.0) > 10  # both verdicts occur
