"""The zero-weight components and answer functions the SQL and ToolRL configs give the hacking
monitors (rlkit/monitors.py): ``rewards.sql:sql_format``, ``rewards.toolrl:format_only`` and
``rewards.toolrl:calls_answer``, by hand, and the monitors reading them over a merged batch."""
from __future__ import annotations

import json

import pytest

from rewards.sql import extract_sql, sql_format
from rewards.toolrl import calls_answer, format_only
from rlkit.monitors import Monitor

REF = '<think>r</think>\n<tool_call>\n{"name": "get", "parameters": {"city": "Oslo"}}\n</tool_call>'


def test_sql_format_is_the_format_partial():
    good = "The customers table.\n```sql\nSELECT name FROM customers\n```"
    assert sql_format([good, "SELECT name FROM customers", good + "\nmore text", ""]) == [1.0, 0.0, 0.0, 0.0]


def test_toolrl_format_only_and_calls_answer():
    wrong_value = REF.replace("Oslo", "Lima")
    assert format_only([REF, wrong_value, "<tool_call>{}</tool_call>", "x"], ground_truth=[REF, REF, REF, None]) == [
        1.0, 1.0, 0.0, None]
    with pytest.raises(ValueError, match="ground_truth"):
        format_only(["x"])
    two = ('<think>r</think>\n<tool_call>\n{"parameters": {"b": 2, "a": 1}, "name": "z"}\n'
           '{"name": "get", "parameters": {"city": "Oslo"}}\n</tool_call>')
    assert calls_answer(two) == ('{"name": "get", "parameters": {"city": "Oslo"}}\n'
                                 '{"name": "z", "parameters": {"a": 1, "b": 2}}')      # sorted, keys sorted
    assert calls_answer("<think>r</think>\n<response>hi</response>") == ""
    assert calls_answer("<think>r</think>\n<tool_call>\nnot json\n</tool_call>") is None


def test_monitors_read_the_sql_components():
    """Two groups of two: format_only = 1 of 4 (format right, result wrong); collapse at the second
    step = 1 of 2 rewarded rows repeats the first step's most common answer."""
    texts = ["```sql\nSELECT 1\n```", "```sql\nSELECT 2\n```", "SELECT 1", "```sql\nSELECT 1\n```"]
    monitor = Monitor(answer_fn=extract_sql, accuracy="execution", format_name="format")
    stats = {"scores": [4.0, 2.0, 0.0, 4.0], "lengths": [5, 5, 3, 5], "group_ids": [0, 0, 1, 1],
             "answers": monitor.answers(texts),
             "components": {"execution": [1.0, 0.0, 0.0, 1.0], "format": sql_format(texts)}}
    first = monitor.update(stats)
    assert first["monitor/format_only"] == 0.25 and "monitor/collapse" not in first
    assert monitor.previous == "SELECT 1"
    second = dict(stats, answers=monitor.answers(["```sql\nSELECT 1\n```", "x", "y", "```sql\nSELECT 3\n```"]))
    assert monitor.update(second)["monitor/collapse"] == 0.5
    assert json.dumps(monitor.state_dict()) == '{"previous": "SELECT 1"}'
