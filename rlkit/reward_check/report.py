"""Run a reward over references, perturbations and degenerate outputs, and report the holes.

``check_reward`` scores, for every row, the perturber's reference and its variants in one
reward call (through ``rewards.combine``: a row that raises or times out is unscored, never a
crash), then compares each variant with its own row's reference:

- a *hole* is a variant of a "wrong" kind scoring at least the reference's score, or a variant
  of a ``ties_ok`` kind (the same answer in a degenerate shape) scoring above it;
- a reference scoring the floor (the lowest score of the whole run) is "not rewarded": every
  variant ties with it, so its row counts no holes and is reported on its own line;
- a reference below the maximum of the references (of its group, ``perturber.group``) is a
  finding too: the reward does not give its best score to the right answer.

``format_report`` renders the result as text (``rlkit reward-check``); the dict itself is what
``--json`` writes.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from typing import Any, Callable

from rewards import Component, RewardError, combine

SHOW_CHARS = 160  # an example's text: head ... tail on one line


def reward_columns(rows: list[dict]) -> dict[str, list]:
    """The rows' columns as lists (None where a row lacks one), ``prompt`` renamed ``prompts``, as
    in training (``rlkit.scoring.score_batch``)."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys and k not in ("completion", "completions"))
    columns = {k: [row.get(k) for row in rows] for k in keys}
    columns["prompts"] = columns.pop("prompt", [None] * len(rows))
    return columns


def shorten(text: str, limit: int = SHOW_CHARS) -> str:
    """One line; a long text as its head and tail (the answer is usually at the end)."""
    flat = text.replace("\n", "\\n")
    if len(flat) <= limit:
        return flat
    tail = limit // 3
    return f"{flat[:limit - tail - 5]} ... {flat[-tail:]} ({len(text)} chars)"


def _variants(perturber: Any, rows: list[tuple[int, dict]]) -> tuple[list[dict], list[str]]:
    """Entries ``{row, kind, text}`` (the reference first per row) and the perturber's errors."""
    entries, errors = [], []
    for index, row in rows:
        try:
            reference = perturber.reference(row)
            variants = [(f"perturb/{k}", t) for k, t in perturber.perturb(row, reference)]
            variants += [(f"degenerate/{k}", t) for k, t in perturber.degenerate(row, reference)]
        except Exception as exc:  # noqa: BLE001 - one bad row must not end the check
            errors.append(f"row {index}: {type(exc).__name__}: {exc}")
            continue
        entries.append({"row": index, "kind": "reference", "text": reference})
        entries += [{"row": index, "kind": kind, "text": str(text)} for kind, text in variants]
    return entries, errors


def _score(fn: Callable, name: str, entries: list[dict], rows: dict[int, dict], timeout_s: float) -> None:
    """Write ``score`` (float, or None) and ``error`` into every entry: one batched reward call."""
    reward = combine(timeout_s=timeout_s, **{name: Component(fn)})
    quiet = logging.getLogger("rewards")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the report counts and shows the failures itself
    try:
        result = reward.score([e["text"] for e in entries], **reward_columns([rows[e["row"]] for e in entries]))
    finally:
        quiet.setLevel(level)
        reward.close()
    failed = {f.row: (f.error.strip().splitlines() or [""])[0] for f in result.failures}
    for i, (entry, value) in enumerate(zip(entries, result.components[name])):
        entry["score"] = None if math.isnan(value) else float(value)
        entry["error"] = failed.get(i)


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "mean": None, "max": None}
    return {"min": min(values), "mean": sum(values) / len(values), "max": max(values)}


def check_reward(fn: Callable, rows: list[tuple[int, dict]], perturber: Any, *, reward_name: str = "reward",
                 examples: int = 3, timeout_s: float = 10.0) -> dict[str, Any]:
    """The reward-check report of ``fn`` on ``rows`` (``(index in the data, row)`` pairs)."""
    entries, perturber_errors = _variants(perturber, rows)
    by_index = dict(rows)
    if entries:
        try:
            _score(fn, "check", entries, by_index, timeout_s)
        except RewardError as exc:  # a broken contract (wrong number of values) is not row-local
            raise ValueError(f"reward {reward_name}: {exc}") from exc
    refs = {e["row"]: e for e in entries if e["kind"] == "reference"}
    scored = [e["score"] for e in entries if e["score"] is not None]
    floor = min(scored) if scored else None
    groups: dict[str, list[float]] = defaultdict(list)
    group_of = {i: str(getattr(perturber, "group", lambda r: "")(by_index[i])) for i in refs}
    for i, ref in refs.items():
        if ref["score"] is not None:
            groups[group_of[i]].append(ref["score"])
    best = {g: max(v) for g, v in groups.items()}
    ref_scores = [r["score"] for r in refs.values() if r["score"] is not None]
    references = {
        **_stats(ref_scores), "rows": len(refs),
        "below_max": [{"row": i, "score": r["score"], "max": best[group_of[i]], "group": group_of[i],
                       "text": shorten(r["text"])}
                      for i, r in refs.items() if r["score"] is not None and r["score"] < best[group_of[i]]],
        "not_rewarded": [i for i, r in refs.items() if r["score"] is not None and r["score"] <= floor],
        "unscored": [{"row": i, "error": r["error"]} for i, r in refs.items() if r["score"] is None],
    }
    if len(best) > 1:
        references["group_max"] = best
    not_rewarded = set(references["not_rewarded"])
    ties_ok = set(getattr(perturber, "ties_ok", ()))
    kinds: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e["kind"] == "reference":
            continue
        short = e["kind"].split("/", 1)[1]
        k = kinds.setdefault(e["kind"], {"class": "same answer" if short in ties_ok else "wrong", "rows": 0,
                                         "scores": [], "holes": 0, "failed": 0, "unscored": 0, "skipped": 0,
                                         "examples": []})
        k["rows"] += 1
        ref = refs[e["row"]]["score"]
        if e["score"] is None:
            k["failed" if e["error"] else "unscored"] += 1
            continue
        k["scores"].append(e["score"])
        if ref is None or e["row"] in not_rewarded:
            k["skipped"] += 1
            continue
        hole = e["score"] > ref if short in ties_ok else e["score"] >= ref
        if hole:
            k["holes"] += 1
            if len(k["examples"]) < examples:
                k["examples"].append({"row": e["row"], "score": e["score"], "reference": ref,
                                      "text": shorten(e["text"])})
    for k in kinds.values():
        k["mean"] = _stats(k.pop("scores"))["mean"]
    failures = [{"row": e["row"], "kind": e["kind"], "error": e["error"]} for e in entries if e["error"]]
    holes = sum(k["holes"] for k in kinds.values())
    hole_kinds = sum(1 for k in kinds.values() if k["holes"])
    summary = f"{holes} holes in {hole_kinds} kinds" if holes else "no holes"
    extra = [f"{n} {what}" for n, what in ((len(references["below_max"]), "references below the maximum"),
                                           (len(not_rewarded), "references not rewarded"),
                                           (len(references["unscored"]), "references unscored")) if n]
    return {"reward": reward_name, "rows_checked": len(refs), "floor": floor, "references": references,
            "kinds": kinds, "holes": holes, "hole_kinds": hole_kinds, "failures": failures,
            "unscored": sum(1 for e in entries if e["score"] is None and not e["error"]),
            "perturber_errors": perturber_errors,
            "summary": summary + (f" ({'; '.join(extra)})" if extra else "")}


def findings(report: dict) -> bool:
    """What ``--strict`` gates on: a hole, or a reference below the maximum, not rewarded or unscored."""
    refs = report["references"]
    return bool(report["holes"] or refs["below_max"] or refs["not_rewarded"] or refs["unscored"])


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _group_max(refs: dict) -> str:
    if "group_max" not in refs:
        return ""
    return "  (maximum per group: " + ", ".join(f"{g or '-'} {_num(v)}" for g, v in refs["group_max"].items()) + ")"


def format_report(report: dict) -> str:
    refs = report["references"]
    lines = [f"reward: {report['reward']}", f"data: {report.get('data', '?')} (task {report.get('task', '?')}, "
             f"{report['rows_checked']} rows checked)",
             f"references: min {_num(refs['min'])}  mean {_num(refs['mean'])}  max {_num(refs['max'])}"
             + _group_max(refs)]
    if refs["below_max"]:
        lines.append(f"  {len(refs['below_max'])} references below the maximum (a finding: the right answer "
                     "does not get the best score):")
        lines += [f"    row {b['row']}: {_num(b['score'])} < {_num(b['max'])}: {b['text']}" for b in refs["below_max"][:20]]
    else:
        lines.append("  every reference scores the maximum")
    if refs["not_rewarded"]:
        lines.append(f"  reference not rewarded on {len(refs['not_rewarded'])} rows (it scores the floor "
                     f"{_num(report['floor'])}, so every output ties; their variants are not counted): rows "
                     + ", ".join(map(str, refs["not_rewarded"][:30])))
    if refs["unscored"]:
        lines.append(f"  reference unscored on {len(refs['unscored'])} rows (None or a failure): "
                     + "; ".join(f"row {u['row']}" + (f" ({u['error']})" if u["error"] else "")
                                 for u in refs["unscored"][:10]))
    failures = report["failures"]
    lines.append(f"reward failures: {len(failures)} outputs raised or timed out, {report['unscored']} returned None"
                 + (f"; first: row {failures[0]['row']} {failures[0]['kind']}: {failures[0]['error']}" if failures else ""))
    if report["perturber_errors"]:
        lines.append(f"perturber errors on {len(report['perturber_errors'])} rows; first: "
                     f"{report['perturber_errors'][0]}")
    lines += ["", f"{'kind':38} {'class':12} {'rows':>5} {'mean':>8} {'holes':>6} {'failed':>6}"]
    for name, k in sorted(report["kinds"].items(), key=lambda kv: (not kv[0].startswith("perturb"), kv[0])):
        lines.append(f"{name:38} {k['class']:12} {k['rows']:>5} {_num(k['mean']):>8} {k['holes']:>6} "
                     f"{k['failed'] + k['unscored']:>6}")
    holes = {n: k for n, k in report["kinds"].items() if k["holes"]}
    if holes:
        lines += ["", "HOLES (output scores >= the reference's score on its row"
                  + ("; > for the same-answer kinds" if any(k["class"] == "same answer" for k in holes.values())
                     else "") + "):"]
        for name, k in holes.items():
            scored = k["rows"] - k["failed"] - k["unscored"] - k["skipped"]
            lines.append(f"  {name}: {k['holes']} of {scored} rows")
            lines += [f"    row {x['row']}: score {_num(x['score'])} vs reference {_num(x['reference'])}: {x['text']}"
                      for x in k["examples"]]
    lines += ["", report["summary"]]
    return "\n".join(lines)
