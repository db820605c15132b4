"""Tests for rewards.toolrl (ToolRL, arXiv 2504.13958; spec section 6) and rlkit.tasks.toolcall."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewards import combine
from rewards.toolrl import (
    ToolRLReward,
    correctness,
    correctness_range,
    format_layout,
    format_range,
    multiset_match,
    parse_tool_calls,
    reference_calls,
    scaled,
    toolrl_reward,
)
from rlkit.tasks.toolcall import bfcl_row, load_bfcl, load_tool_rows, load_toolrl, parse_toolrl_tools, system_prompt

RLLA_SFT = Path(__file__).resolve().parents[2] / "shared" / "data" / "toolrl" / "rlla_sft.json"
TAG_STRINGS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<response>", "</response>")


def call_lines(*calls: tuple[str, dict]) -> str:
    return "\n".join(json.dumps({"name": name, "parameters": params}) for name, params in calls)


def tc(*calls: tuple[str, dict], response: str | None = None, think: str = "reasoning") -> str:
    """A well-formed completion: think, a tool-call block with ``calls``, optionally a response."""
    text = f"<think>{think}</think>\n<tool_call>\n{call_lines(*calls)}\n</tool_call>"
    return text if response is None else f"{text}\n<response>{response}</response>"


THINK_ONLY = "<think>nothing to do</think>"
RESPONSE_ONLY = "<think>just answer</think>\n<response>Hello!</response>"
WEATHER = ("get_weather", {"city": "Paris", "unit": "C"})


# ---- spec examples ------------------------------------------------------------------------------

def test_spec_example_weather():
    gt = tc(WEATHER)
    pred = tc(("get_weather", {"city": "Paris", "unit": "F"}))
    out = toolrl_reward(pred, gt)
    assert out["correctness"] == pytest.approx(1.5)  # score 3 of S_max 4
    assert out["format"] == 1.0
    assert out["total"] == pytest.approx(2.5)
    assert set(out) == {"format", "correctness", "total"}


def test_spec_example_two_calls():
    gt = tc(("search", {"q": "llm"}), ("book", {"id": 7, "n": 2}))
    pred = tc(("search", {"q": "llm", "k": 5}), ("cancel", {"id": 7}))
    # names 1/3 + search (keys 1/2 + 1 value) + book (no same-name call: 0) = 11/6 of S_max 6
    assert round(correctness(pred, gt), 4) == -1.1667
    assert toolrl_reward(pred, gt)["correctness"] == pytest.approx(6 * (11 / 6) / 6 - 3)


def test_spec_example_multiset_match():
    assert multiset_match(["A", "B"], ["A", "A", "C"]) == pytest.approx(0.25)


@pytest.mark.parametrize("a, b, expected", [
    ([], [], 1.0), (["A"], [], 0.0), ([], ["A"], 0.0), (["A", "B"], ["B", "A"], 1.0),
    (["A", "A"], ["A"], 0.5), ({"x": 1, "y": 2}, {"x": 3}, 0.5),
])
def test_multiset_match_edges(a, b, expected):
    assert multiset_match(a, b) == pytest.approx(expected)


# ---- format -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, layout", [
    (tc(WEATHER), ("think", "tool_call")),
    (RESPONSE_ONLY, ("think", "response")),
    (tc(WEATHER, response="Checking."), ("think", "tool_call", "response")),
    (THINK_ONLY, ("think",)),
    ("<think></think>\n<response></response>", ("think", "response")),
    ("<think>\nmulti\nline\n</think>\n<response>a\n\nb</response>", ("think", "response")),
])
def test_format_each_layout(text, layout):
    assert format_layout(text) == layout
    assert toolrl_reward(text, text)["format"] == 1.0


def test_format_needs_the_ground_truth_layout():
    both = tc(WEATHER, response="ok")
    assert toolrl_reward(tc(WEATHER), both)["format"] == 0.0
    assert toolrl_reward(both, tc(WEATHER))["format"] == 0.0
    assert toolrl_reward(RESPONSE_ONLY, tc(WEATHER))["format"] == 0.0
    assert toolrl_reward(THINK_ONLY, RESPONSE_ONLY)["format"] == 0.0
    assert toolrl_reward(RESPONSE_ONLY, THINK_ONLY)["format"] == 0.0


@pytest.mark.parametrize("text", [
    tc(WEATHER) + "\n<tool_call>\n" + call_lines(WEATHER) + "\n</tool_call>",        # block twice
    "<think>a</think>\n<think>b</think>\n<tool_call>\n" + call_lines(WEATHER) + "\n</tool_call>",
    "<think>I will use <tool_call> now</think>\n<tool_call>\n" + call_lines(WEATHER) + "\n</tool_call>",
    tc(WEATHER) + "\nthanks",                                                          # text after the last tag
    tc(WEATHER) + " done",
    "Sure. " + tc(WEATHER),                                                            # text before <think>
    "<think>a</think>\n\n<tool_call>\n" + call_lines(WEATHER) + "\n</tool_call>",      # double newline
    "<think>a</think><tool_call>\n" + call_lines(WEATHER) + "\n</tool_call>",          # no newline
    "<think>a</think> \n<tool_call>\n" + call_lines(WEATHER) + "\n</tool_call>",       # space + newline
    "<tool_call>\n" + call_lines(WEATHER) + "\n</tool_call>",                          # no think
    "<think>a\n<tool_call>\n" + call_lines(WEATHER) + "\n</tool_call>",                # think not closed
    "<think>a</think>\n<tool_call>\n" + call_lines(WEATHER),                           # block not closed
])
def test_format_zero(text):
    assert format_layout(text) is None
    assert toolrl_reward(text, tc(WEATHER))["format"] == 0.0


def test_format_order_and_double_newline_before_response():
    calls = "<tool_call>\n" + call_lines(WEATHER) + "\n</tool_call>"
    gt = tc(WEATHER, response="ok")
    assert toolrl_reward(f"<think>a</think>\n<response>ok</response>\n{calls}", gt)["format"] == 0.0
    assert toolrl_reward(f"<think>a</think>\n{calls}\n\n<response>ok</response>", gt)["format"] == 0.0


def test_format_strips_surrounding_whitespace():
    gt = tc(WEATHER)
    out = toolrl_reward("\n\n  " + tc(WEATHER) + "  \n\t", gt)
    assert out == {"format": 1.0, "correctness": 3.0, "total": 4.0}


# ---- correctness --------------------------------------------------------------------------------

def test_correctness_zero_without_reference_call():
    assert toolrl_reward(tc(WEATHER), RESPONSE_ONLY)["correctness"] == 0.0
    assert toolrl_reward("garbage", THINK_ONLY)["correctness"] == 0.0
    assert correctness(tc(WEATHER), "<think>a</think>\n<tool_call>\n</tool_call>") == 0.0  # empty block


@pytest.mark.parametrize("pred", [
    RESPONSE_ONLY,                                                                     # no block
    "<think>a</think>\n<tool_call>\n" + call_lines(WEATHER),                           # no closing tag
    "<think>a</think>\n<tool_call>\nget_weather(city='Paris')\n</tool_call>",          # not JSON
    "<think>a</think>\n<tool_call>\n" + call_lines(WEATHER) + " trailing\n</tool_call>",
    "<think>a</think>\n<tool_call>\n[" + call_lines(WEATHER) + "]\n</tool_call>",      # a list, not an object
    "<think>a</think>\n<tool_call>\n" + json.dumps({"name": "get_weather", "parameters": {"city": "Paris",
                                                   "unit": "C"}}, indent=1) + "\n</tool_call>",  # spans lines
    "<think>a</think>\n<tool_call>\n{\"parameters\": {\"city\": \"Paris\"}}\n</tool_call>",  # no name
    "<think>a</think>\n<tool_call>\n{\"name\": 3, \"parameters\": {}}\n</tool_call>",      # name not a string
    "<think>a</think>\n<tool_call>\n{\"name\": \"get_weather\"}\n</tool_call>",          # same name, no parameters
    "<think>a</think>\n<tool_call>\n{\"name\": \"other\", \"parameters\": [1]}\n</tool_call>",  # bad parameters
    "<think>a</think>\n<tool_call>\n</tool_call>",                                     # empty block: names match 0
])
def test_correctness_minus_three(pred):
    assert correctness(pred, tc(WEATHER)) == -3.0


def test_call_without_name_is_unparseable():
    block = "<tool_call>\n" + call_lines(WEATHER) + "\n{\"parameters\": {}}\n</tool_call>"
    assert parse_tool_calls(block) is None
    assert correctness("<think>a</think>\n" + block, tc(WEATHER)) == -3.0


def test_other_name_call_without_parameters_is_kept():
    pred = "<think>a</think>\n<tool_call>\n" + call_lines(WEATHER) + "\n{\"name\": \"ping\"}\n</tool_call>"
    assert parse_tool_calls(pred) == [{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}},
                                      {"name": "ping"}]
    # names 1/2 + get_weather 1 + 2 = 3.5 of S_max 4
    assert correctness(pred, tc(WEATHER)) == pytest.approx(6 * 3.5 / 4 - 3)


def test_exact_list_is_three():
    gt = tc(("search", {"q": "llm"}), ("book", {"id": 7, "n": 2}))
    assert correctness(gt, gt) == 3.0
    assert correctness(tc(("search", {"q": "llm"}), ("book", {"n": 2, "id": 7}), think="other"), gt) == 3.0
    assert correctness(tc(("f", {})), tc(("f", {}))) == 3.0


def test_order_swapped():
    gt = tc(("search", {"q": "llm"}), ("book", {"id": 7, "n": 2}))
    swapped = [{"name": "book", "parameters": {"id": 7, "n": 2}}, {"name": "search", "parameters": {"q": "llm"}}]
    assert parse_tool_calls(tc(("book", {"id": 7, "n": 2}), ("search", {"q": "llm"}))) == swapped
    assert swapped != reference_calls(gt)  # the "+3 in order" rule does not apply ...
    # ... but the order-free score reaches S_max anyway: the formula also gives 3 (see module docstring)
    assert correctness(tc(("book", {"id": 7, "n": 2}), ("search", {"q": "llm"})), gt) == pytest.approx(3.0)
    # swapped and one value wrong: names 1 + search 2 + book (1 + 1) = 5 of S_max 6 → 2.0
    assert correctness(tc(("book", {"id": 7, "n": 3}), ("search", {"q": "llm"})), gt) == pytest.approx(2.0)


def test_greedy_takes_best_unused_same_name_call():
    gt = tc(("f", {"a": 1}), ("f", {"a": 2}))
    # the first f call of the reference takes the better (second) prediction; the second takes the rest
    pred = tc(("f", {"a": 2, "b": 0}), ("f", {"a": 1}))
    # names 1 + f(a=1)↔f(a=1): 2 + f(a=2)↔f(a=2,b=0): 1/2 + 1 → 4.5 of S_max 5
    assert correctness(pred, gt) == pytest.approx(6 * 4.5 / 5 - 3)
    # one prediction for two same-name reference calls: greedy in reference order, the first
    # reference call f(a=1) takes it (keys 1 + values 0) although it fits f(a=2) better; the second gets 0
    assert correctness(tc(("f", {"a": 2})), gt) == pytest.approx(6 * (0.5 + 1) / 5 - 3)


def test_values_compare_with_python_equality():
    gt = tc(("book", {"id": 7}))
    assert correctness(tc(("book", {"id": 7.0})), gt) == pytest.approx(3.0)
    assert correctness(tc(("book", {"id": "7"})), gt) == pytest.approx(6 * 2 / 3 - 3)


def test_reference_mentioning_tags_in_its_reasoning():
    gt = ("<think>Format it in <tool_call> tags, no <response> needed.</think>\n<tool_call>\n"
          + call_lines(WEATHER) + "\n</tool_call>")
    assert reference_calls(gt) == [{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}]
    assert toolrl_reward(tc(WEATHER), gt) == {"format": 1.0, "correctness": 3.0, "total": 4.0}
    # the same text as a completion: the tags occur twice (format 0) and the first <tool_call> opens prose (-3)
    assert toolrl_reward(gt, gt) == {"format": 0.0, "correctness": -3.0, "total": -3.0}


def test_unparseable_reference_raises():
    with pytest.raises(ValueError, match="ground truth"):
        correctness(tc(WEATHER), "<think>a</think>\n<tool_call>\nnot json\n</tool_call>")


# ---- dynamic scaling ----------------------------------------------------------------------------

@pytest.mark.parametrize("step, fmt_range, corr_range", [
    (0, (2.0, -2.0), (2.0, -2.0)),
    (75, (1.5, -1.0), (2.5, -2.5)),
    (150, (1.0, -1.0), (3.0, -3.0)),
    (300, (1.0, -1.0), (3.0, -3.0)),
])
def test_scaling_ranges(step, fmt_range, corr_range):
    assert format_range(step) == pytest.approx(fmt_range)
    assert correctness_range(step) == pytest.approx(corr_range)


@pytest.mark.parametrize("step, expected", [
    # (format, correctness) for raw (1, 1.5), (0, -3), (1, 3), (0, 0)
    (0, [(2.0, 1.0), (-2.0, -2.0), (2.0, 2.0), (-2.0, 0.0)]),
    (150, [(1.0, 1.5), (-1.0, -3.0), (1.0, 3.0), (-1.0, 0.0)]),
    (300, [(1.0, 1.5), (-1.0, -3.0), (1.0, 3.0), (-1.0, 0.0)]),
])
def test_scaled_values(step, expected):
    raws = [(1.0, 1.5), (0.0, -3.0), (1.0, 3.0), (0.0, 0.0)]
    for raw, want in zip(raws, expected):
        assert scaled(*raw, step) == pytest.approx(want)


def test_toolrl_reward_with_step():
    gt, pred = tc(WEATHER), tc(("get_weather", {"city": "Paris", "unit": "F"}))
    assert toolrl_reward(pred, gt, step=0) == pytest.approx({"format": 2.0, "correctness": 1.0, "total": 3.0})
    assert toolrl_reward(pred, gt, step=150) == pytest.approx({"format": 1.0, "correctness": 1.5, "total": 2.5})
    assert toolrl_reward(pred, gt, step=300) == pytest.approx({"format": 1.0, "correctness": 1.5, "total": 2.5})
    assert toolrl_reward("oops", gt, step=0) == pytest.approx({"format": -2.0, "correctness": -2.0, "total": -4.0})
    with pytest.raises(ValueError):
        toolrl_reward(pred, gt, step=-1)


# ---- reward module ------------------------------------------------------------------------------

def test_module_scores_rows_and_skips_missing_ground_truth():
    fn = ToolRLReward()
    gt = tc(WEATHER)
    out = fn([tc(WEATHER), "oops", "x", "y"], ground_truth=[gt, gt, None, ""], prompts=["p"] * 4, other=[1] * 4)
    assert out == [4.0, -3.0, None, None]
    assert fn.update({"anything": 1}) == {"format": pytest.approx(0.5), "correctness": pytest.approx(0.0)}
    assert fn.step == 1


def test_module_column_name_and_errors():
    fn = ToolRLReward(ground_truth_column="reference")
    assert fn([RESPONSE_ONLY], reference=[RESPONSE_ONLY]) == [1.0]
    with pytest.raises(ValueError, match="reference"):
        fn([RESPONSE_ONLY], ground_truth=[RESPONSE_ONLY])
    with pytest.raises(TypeError, match="str"):
        fn([RESPONSE_ONLY], reference=[[{"f": {}}]])
    with pytest.raises(ValueError, match="2 ground truths for 1"):
        fn([RESPONSE_ONLY], reference=[RESPONSE_ONLY] * 2)
    fn([RESPONSE_ONLY], reference=[None])
    assert fn.update(None) == {}


def test_module_dynamic_scaling_follows_the_step_counter():
    fn = ToolRLReward(dynamic_scaling=True)
    gt, pred = tc(WEATHER), tc(("get_weather", {"city": "Paris", "unit": "F"}))
    assert fn([pred], ground_truth=[gt]) == [pytest.approx(3.0)]         # step 0: 2 + 1
    for _ in range(150):
        fn.update(None)
    assert fn([pred], ground_truth=[gt]) == [pytest.approx(2.5)]         # step 150: 1 + 1.5
    assert fn.update(None) == {"format": 1.0, "correctness": 1.5}       # stats are raw
    stretched = ToolRLReward(dynamic_scaling=True, total_steps=300)
    stretched.load_state_dict({"step": 150})                             # s/300 = 0.5 ↔ spec step 75
    assert stretched([pred], ground_truth=[gt]) == [pytest.approx(1.5 + 1.25)]


def test_module_state_round_trip():
    fn = ToolRLReward(dynamic_scaling=True)
    for _ in range(7):
        fn.update(None)
    state = fn.state_dict()
    assert state == {"step": 7}
    other = ToolRLReward(dynamic_scaling=True)
    other.load_state_dict(state)
    assert other.step == 7 and other.state_dict() == state
    for bad in ({}, {"step": -1}, {"step": 1.5}, None):
        with pytest.raises(ValueError):
            other.load_state_dict(bad)


def test_module_inside_combine():
    reward = combine(toolrl=ToolRLReward())
    result = reward.score([tc(WEATHER), "x"], ground_truth=[tc(WEATHER), None])
    assert result.scores == [4.0, 0.0] and result.num_unscored == 1
    assert reward.update(None) == {"toolrl/format": 1.0, "toolrl/correctness": 3.0}
    assert reward.state_dict() == {"toolrl": {"step": 1}}
    reward.load_state_dict({"toolrl": {"step": 5}})
    assert reward.components["toolrl"].fn.step == 5


# ---- loader -------------------------------------------------------------------------------------

TOOLRL_INSTRUCTION = (
    "You are a helpful assistant.\n\n**Available Tools**\nIn your response, you can use the following tools:\n"
    "1. Name: get_weather\nDescription: Weather of a city\nParameters: {\"city\": {\"type\": \"string\"}}\n"
    "2. Name: Search Managers\nDescription: Find managers\nby name\nParameters: {}\n\n"
    "**Steps for Each Turn**\n1. Think.\n\n**Output Format**\n<think> ... </think>")


def toolrl_record(output: str) -> dict:
    return {"instruction": TOOLRL_INSTRUCTION, "input": "**Dialogue Records History**\n<user> hi </user>",
            "output": output}


def write(tmp_path: Path, name: str, records: list, lines: bool = False) -> Path:
    path = tmp_path / name
    text = "\n".join(json.dumps(r) for r in records) if lines else json.dumps(records)
    path.write_text(text)
    return path


def test_load_toolrl(tmp_path):
    path = write(tmp_path, "rl.json", [toolrl_record(tc(WEATHER)), toolrl_record(RESPONSE_ONLY),
                                       toolrl_record(tc(WEATHER, response="ok"))])
    rows = load_toolrl(path)
    assert [r["category"] for r in rows] == ["tool_call", "response", "tool_call+response"]
    assert rows[0]["prompt"] == [{"role": "system", "content": TOOLRL_INSTRUCTION},
                                 {"role": "user", "content": "**Dialogue Records History**\n<user> hi </user>"}]
    assert rows[0]["ground_truth"] == tc(WEATHER)
    assert rows[0]["tools"] == [
        {"name": "get_weather", "description": "Weather of a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "Search Managers", "description": "Find managers\nby name",
         "parameters": {"type": "object", "properties": {}}}]
    assert load_toolrl(path, limit=1) == rows[:1]
    assert load_tool_rows(path) == rows
    assert parse_toolrl_tools("no tools here") == []


BFCL_FUNCTION = [{"name": "get_weather", "description": "Weather of a city",
                  "parameters": {"type": "dict", "properties": {"city": {"type": "string"},
                                                                "unit": {"type": "string"}},
                                 "required": ["city"]}}]


def bfcl_record(**overrides) -> dict:
    record = {"id": "simple_12", "question": [[{"role": "user", "content": "Weather in Paris?"}]],
              "function": BFCL_FUNCTION,
              "ground_truth": [{"get_weather": {"city": ["Paris", "Paris, France"], "unit": ["", "celsius"]}}]}
    record.update(overrides)
    return record


def test_bfcl_row():
    row = bfcl_row(bfcl_record())
    assert row["category"] == "simple"
    assert row["tools"] == BFCL_FUNCTION
    assert row["prompt"][0] == {"role": "system", "content": system_prompt(BFCL_FUNCTION)}
    assert row["prompt"][1:] == [{"role": "user", "content": "Weather in Paris?"}]
    assert row["ground_truth"] == ('<think></think>\n<tool_call>\n'
                                   '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}'
                                   '\n</tool_call>')
    assert toolrl_reward(row["ground_truth"], row["ground_truth"]) == {"format": 1.0, "correctness": 3.0,
                                                                       "total": 4.0}


def test_bfcl_variants():
    flat = bfcl_row(bfcl_record(id="live_multiple_3-2-0", question=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}]))
    assert flat["category"] == "live_multiple"
    assert len(flat["prompt"]) == 2 and flat["prompt"][0]["content"].endswith("\n\nBe brief.")
    nested = bfcl_row(bfcl_record(ground_truth=[
        {"f": {"opt": [""], "d": [{"a": ["x", "y"], "b": ["", 2]}], "xs": [[1, 2]]}}, {"g": {}}]))
    assert reference_calls(nested["ground_truth"]) == [
        {"name": "f", "parameters": {"d": {"a": "x", "b": 2}, "xs": [1, 2]}}, {"name": "g", "parameters": {}}]
    irrelevant = bfcl_row(bfcl_record(id="irrelevance_4", ground_truth=[]))
    assert irrelevant["ground_truth"] == "<think></think>\n<response></response>"
    assert toolrl_reward(RESPONSE_ONLY, irrelevant["ground_truth"]) == {"format": 1.0, "correctness": 0.0,
                                                                        "total": 1.0}
    assert bfcl_row(bfcl_record(question="plain text", category="mine"))["category"] == "mine"
    assert bfcl_row({k: v for k, v in bfcl_record().items() if k != "id"})["category"] == "bfcl"


def test_load_bfcl_json_lines_and_auto(tmp_path):
    path = write(tmp_path, "BFCL_v3_simple.json", [bfcl_record(), bfcl_record(id="simple_13")], lines=True)
    rows = load_bfcl(path)
    assert len(rows) == 2 and load_tool_rows(path) == rows and load_tool_rows(path, format="bfcl") == rows
    assert load_tool_rows(path, limit=1) == rows[:1]
    single = write(tmp_path, "one.json", [bfcl_record()], lines=True)  # one line: a bare JSON object
    assert load_tool_rows(single) == rows[:1]


@pytest.mark.parametrize("records, fmt, message", [
    ([toolrl_record(tc(WEATHER)), {"instruction": "x", "input": "y"}], "toolrl", r"record 2: missing key 'output'"),
    ([bfcl_record(), bfcl_record(), {k: v for k, v in bfcl_record().items() if k != "function"}], "bfcl",
     r"record 3: missing key 'function'"),
    ([bfcl_record(ground_truth=[{"f": {"a": "x"}}])], "bfcl", r"record 1: key 'ground_truth'"),
    ([bfcl_record(question=[[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]])], "bfcl",
     r"record 1: key 'question'.*2 turns"),
    ([toolrl_record(tc(WEATHER)), "text"], "toolrl", r"record 2: expected an object"),
    ([{"prompt": "x"}], "auto", r"record 1: neither"),
])
def test_loader_errors_name_file_record_and_key(tmp_path, records, fmt, message):
    """Records are numbered from 1 in the messages (the first record is record 1)."""
    path = write(tmp_path, "bad.json", records)
    with pytest.raises(ValueError, match=message) as info:
        load_tool_rows(path, format=fmt)
    assert str(path) in str(info.value)


def test_loader_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_tool_rows(tmp_path / "nope.json")


# ---- the real ToolRL SFT data ---------------------------------------------------------------------

def _mentions_tags_in_think(reference: str) -> bool:
    think = reference[reference.find("<think>") + len("<think>"):reference.find("</think>")]
    return any(tag in think for tag in TAG_STRINGS)


@pytest.mark.skipif(not RLLA_SFT.is_file(), reason=f"{RLLA_SFT} is absent")
def test_rlla_sft_references_score_themselves():
    """Every record loads. A reference scores format 1 and correctness 3 (0 without a tool call)
    against itself, except the references whose reasoning mentions a tag in prose (17 of 400 in
    the shared copy: "<tool_call>", sometimes also "<response>"): by the literal spec ("each tag
    once", "the first <tool_call>") those get format 0 and correctness -3 as completions, while
    their reading as a ground truth (blocks after the first </think>) is unaffected."""
    rows = load_tool_rows(RLLA_SFT)
    records = json.loads(RLLA_SFT.read_text())
    assert len(rows) == len(records) > 0
    quirky = []
    for index, row in enumerate(rows):
        reference = row["ground_truth"]
        assert row["tools"] and row["prompt"][0]["role"] == "system"
        expected = 3.0 if reference_calls(reference) else 0.0
        assert (expected == 3.0) == (row["category"] != "response"), index
        out = toolrl_reward(reference, reference)
        if _mentions_tags_in_think(reference):
            quirky.append(index)
            assert out["format"] == 0.0, index
            assert out["correctness"] == (-3.0 if "<tool_call>" in reference.split("</think>")[0] else expected)
            clean = reference[reference.find("</think>"):]  # the same answer without the prose mention
            assert toolrl_reward("<think>ok" + clean, reference)["format"] == 1.0, index
            assert toolrl_reward("<think>ok" + clean, reference)["correctness"] == expected, index
        else:
            assert out == {"format": 1.0, "correctness": expected, "total": 1.0 + expected}, index
    assert len(quirky) < len(rows) // 10, quirky


def test_exact_call_component():
    from rewards.toolrl import exact_call

    reference = tc(WEATHER)
    assert exact_call([reference, tc(WEATHER, response="ok"), "no"], ground_truth=[reference, reference, None]) == [
        1.0, 0.0, None]
    with pytest.raises(ValueError, match="ground_truth"):
        exact_call(["x"])


def test_data_task_toolcall_splits_and_runs_the_config(tmp_path):
    """``data.task: toolcall`` through load_rows, with the shipped config's reward functions."""
    from rlkit.config import ConfigError, load_config
    from rlkit.data import load_rows
    from rlkit.scoring import build_reward

    path = write(tmp_path, "rl.json", [toolrl_record(tc(WEATHER))] * 9 + [toolrl_record(RESPONSE_ONLY)] * 6)
    config = Path(__file__).resolve().parents[1] / "configs" / "grpo_toolrl.yaml"
    cfg = load_config(config, [f"data.path={path}", "data.num_eval=3"])
    train, held = load_rows(cfg.data, seed=0)
    assert len(train) == 12 and len(held) == 3 and all("ground_truth" in r and "tools" in r for r in train)
    reward = build_reward(cfg.rewards)
    result = reward.score([tc(WEATHER), "<think>x</think>"], ground_truth=[tc(WEATHER), tc(WEATHER)])
    assert result.components["exact"] == [1.0, 0.0] and result.scores[0] == 4.0  # format 1 + correctness 3
    with pytest.raises(ConfigError, match="data.path"):
        load_config(config, ["data.path=null"])
