"""ToolRL format reward: the tool-call block layout of spec section 6 (rewards/toolrl.py).

``<tool_call>`` and ``</tool_call>`` alone on their lines, one JSON object per line between them,
no blank line; any other layout scores format 0 while correctness is unchanged."""

from __future__ import annotations

import json

import pytest

from rewards.toolrl import format_layout, toolrl_reward

WEATHER = ("get_weather", {"city": "Paris", "unit": "C"})


def call_lines(*calls: tuple[str, dict]) -> str:
    return "\n".join(json.dumps({"name": name, "parameters": params}) for name, params in calls)


def tc(*calls: tuple[str, dict]) -> str:
    return f"<think>reasoning</think>\n<tool_call>\n{call_lines(*calls)}\n</tool_call>"


TWO_CALLS = (("search", {"q": "llm"}), ("book", {"id": 7, "n": 2}))


@pytest.mark.parametrize("block", [
    "<tool_call>" + call_lines(WEATHER) + "</tool_call>",                               # all on one line
    "<tool_call>\n" + call_lines(WEATHER) + "</tool_call>",                             # closing tag not alone
    "<tool_call>" + call_lines(WEATHER) + "\n</tool_call>",                             # opening tag not alone
    "<tool_call>\n\n" + call_lines(WEATHER) + "\n</tool_call>",                         # blank line first
    "<tool_call>\n" + call_lines(WEATHER) + "\n\n</tool_call>",                         # blank line last
    "<tool_call>\n" + call_lines(TWO_CALLS[0]) + "\n\n" + call_lines(TWO_CALLS[1]) + "\n</tool_call>",
    "<tool_call>\n" + call_lines(TWO_CALLS[0]) + "\n  \n" + call_lines(TWO_CALLS[1]) + "\n</tool_call>",
    "<tool_call>\n" + call_lines(*TWO_CALLS).replace("\n", " ") + "\n</tool_call>",      # two objects, one line
    "<tool_call>\n" + json.dumps({"name": "get_weather", "parameters": WEATHER[1]}, indent=1) + "\n</tool_call>",
    "<tool_call>\n</tool_call>",                                                       # empty block
    "<tool_call>\n\n</tool_call>",
    "<tool_call> \n" + call_lines(WEATHER) + "\n</tool_call>",                          # text after the tag
    "<tool_call>\nget_weather(city='Paris')\n</tool_call>",                            # not JSON
    "<tool_call>\n[" + call_lines(WEATHER) + "]\n</tool_call>",                        # not an object
])
def test_format_zero_for_a_tool_call_block_off_the_spec_layout(block):
    """Spec section 6: <tool_call> and </tool_call> alone on their lines, one JSON object per line
    between them, no blank line."""
    gt = tc(*TWO_CALLS)
    text = "<think>a</think>\n" + block
    assert format_layout(text) is None
    assert toolrl_reward(text, gt)["format"] == 0.0
    assert format_layout(text + "\n<response>ok</response>") is None


def test_format_one_for_the_spec_layout_and_correctness_unchanged():
    gt = tc(*TWO_CALLS)
    assert format_layout(tc(*TWO_CALLS)) == ("think", "tool_call")
    assert toolrl_reward(tc(*TWO_CALLS), gt) == {"format": 1.0, "correctness": 3.0, "total": 4.0}
    # correctness still reads the other layouts (it skips blank lines): only the format drops
    inline_tags = "<think>a</think>\n<tool_call>" + call_lines(*TWO_CALLS) + "</tool_call>"
    assert toolrl_reward(inline_tags, gt) == {"format": 0.0, "correctness": 3.0, "total": 3.0}
    blank = "<think>a</think>\n<tool_call>\n" + call_lines(*TWO_CALLS).replace("\n", "\n\n") + "\n</tool_call>"
    assert toolrl_reward(blank, gt) == {"format": 0.0, "correctness": 3.0, "total": 3.0}
    # JSON whitespace around the object on its line is still one JSON object per line
    padded = "<think>a</think>\n<tool_call>\n  " + call_lines(WEATHER) + "  \n</tool_call>"
    assert format_layout(padded) == ("think", "tool_call")


def test_system_prompt_example_has_the_scored_layout():
    """The output format shown to the policy (rlkit.tasks.toolcall.OUTPUT_FORMAT) scores format 1."""
    from rlkit.tasks.toolcall import OUTPUT_FORMAT

    example = OUTPUT_FORMAT[OUTPUT_FORMAT.index("<think>"):OUTPUT_FORMAT.index("</response>") + len("</response>")]
    assert format_layout(example) == ("think", "tool_call", "response")
