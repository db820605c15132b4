"""The calculator agent against GRPO without tools on arithmetic levels 2-5, at about the same CPU time.

    python scripts/compare_agents.py [--steps 40] [--baseline-steps 150] [override ...]

Runs configs/agent_calc.yaml (multi-turn, a calculator tool) for ``--steps`` steps and
configs/agent_calc_notool.yaml (single-turn, no tool) for ``--baseline-steps`` steps, chosen so
the two take about the same training time (a finished run in ``--runs`` is reused), and writes
``docs/results/agents.md`` and ``.png``: held-out greedy accuracy (200 problems, levels 2-5)
against training minutes, per level, with binomial standard errors, and the agent's tool use.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compare_common import ROOT, page_paths, project_path, run_variant, write_page  # noqa: E402

LEVELS = (2, 3, 4, 5)


def read(run_dir: Path) -> dict:
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    train = [m for m in lines if m["kind"] == "train"]
    evals = {m["step"]: m for m in lines if m["kind"] == "eval"}
    minutes, total = {0: 0.0}, 0.0
    for m in train:
        total += m.get("time/step", 0.0) / 60
        minutes[m["step"]] = total
    final = run_dir / f"eval_step{max(evals)}.jsonl"
    records = [json.loads(s) for s in final.read_text().splitlines() if s.strip()] if final.exists() else []
    return {"train": train, "evals": evals, "minutes": minutes, "records": records}


def se(p: float, n: int) -> float:
    return 100 * math.sqrt(p * (1 - p) / n) if n else float("nan")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        steps = sorted(r["evals"])
        n = len(r["records"]) or 200
        acc = [100 * r["evals"][s]["eval/accuracy"] for s in steps]
        axes[0].errorbar([r["minutes"].get(s, float("nan")) for s in steps], acc,
                         yerr=[se(a / 100, n) for a in acc], marker="o", capsize=3, label=name)
        calls = [m.get("agent/tool_calls_per_episode") for m in r["train"]]
        if any(c is not None for c in calls):
            axes[1].plot([m["step"] for m in r["train"]], calls, label=f"{name}: tool calls / episode")
            axes[1].plot([m["step"] for m in r["train"]], [m.get("agent/tool_errors") for m in r["train"]],
                         label=f"{name}: tool errors / episode")
    axes[0].set(xlabel="training minutes (evaluations excluded)", ylabel="held-out accuracy, levels 2-5 (%)",
                title="Held-out greedy accuracy (+- 1 s.e.)")
    axes[1].set(xlabel="training step", title="Agent: tool use per episode (training samples)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps of the calculator agent")
    parser.add_argument("--baseline-steps", type=int, default=150, help="steps of the no-tool baseline")
    parser.add_argument("--runs", default="runs/agents")
    parser.add_argument("--doc", default="docs/results/agents.md")
    parser.add_argument("--remark", action="append", default=[], help="a sentence for the page's notes")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    runs = project_path(args.runs)
    variants = {"calculator agent": ("agent_calc.yaml", args.steps, args.steps // 2),
                "no tool": ("agent_calc_notool.yaml", args.baseline_steps, args.baseline_steps // 3)}
    results = {}
    for name, (config, steps, every) in variants.items():
        run_dir = run_variant(name.replace(" ", "_"), f"include:\n  - {ROOT / 'configs' / config}\n", runs,
                              [f"train.steps={steps}", f"eval.every={every}", *args.overrides])
        if (run_dir / "metrics.jsonl").exists():
            results[name] = read(run_dir)
    doc, image = page_paths(args.doc)
    plot(results, image)
    rows = []
    for name, r in results.items():
        first, last = min(r["evals"]), max(r["evals"])
        n = len(r["records"]) or 200
        a0, a1 = r["evals"][first]["eval/accuracy"], r["evals"][last]["eval/accuracy"]
        levels = " | ".join(f"{100 * r['evals'][last].get(f'eval/accuracy_level{k}', float('nan')):.0f}"
                            for k in LEVELS)
        calls = r["evals"][last].get("eval/tool_calls_per_episode")
        errors = r["evals"][last].get("eval/tool_errors_per_episode")
        rows.append(f"| {name} | {last} | {r['minutes'][last]:.1f} | {100 * a0:.1f} | {100 * a1:.1f} +- {se(a1, n):.1f} "
                    f"| {levels} | {'n/a' if calls is None else f'{calls:.2f}'} | "
                    f"{'n/a' if errors is None else f'{errors:.2f}'} |")
    names = list(results)
    notes = []
    if len(names) == 2:
        (n1, r1), (n2, r2) = results.items()
        a1 = r1["evals"][max(r1["evals"])]["eval/accuracy"]
        a2 = r2["evals"][max(r2["evals"])]["eval/accuracy"]
        diff_se = math.hypot(se(a1, len(r1["records"]) or 200), se(a2, len(r2["records"]) or 200))
        notes.append(f"Final held-out accuracy: {n1} {100 * a1:.1f}%, {n2} {100 * a2:.1f}%; the difference is "
                     f"{100 * (a1 - a2):+.1f} points, {abs(100 * (a1 - a2)) / diff_se:.1f} standard errors of the "
                     "difference (binomial, 200 problems each). One seed (train.seed 0) per run.")
    for name, r in results.items():
        times = sorted(m["time/step"] for m in r["train"] if "time/step" in m)
        last = r["evals"][max(r["evals"])]
        bare = [last.get(f"eval/accuracy_level{k}") for k in (2, 3)]
        words = [last.get(f"eval/accuracy_level{k}") for k in (4, 5)]
        if times and None not in bare + words:
            notes.append(f"**{name}**: median step {times[len(times) // 2]:.1f} s (min {times[0]:.1f}, max "
                         f"{times[-1]:.1f}); final accuracy on the bare expressions of levels 2-3 "
                         f"{50 * sum(bare):.0f}%, on the word problems of levels 4-5 {50 * sum(words):.0f}% "
                         "(100 problems each, s.e. at most 5 points).")
    notes.append("Reading the result: the calculator removes arithmetic errors, not reading errors. A word problem "
                 "needs the right expression first, and a wrong one gives a wrong answer exactly "
                 "(`eval_step<N>.jsonl` in the agent's run folder holds every conversation). The agent's "
                 "conversation starts with two worked episodes (a calculator call, its result, `#### value`) that "
                 "the no-tool prompt does not have, so part of the agent's start is the answer format; a no-tool "
                 "control with worked direct answers was not run. The agent's steps cost more: its prompt carries "
                 "the tool description and the examples (about 400 tokens, against about 50) and a second turn.")
    command = " ".join(["python scripts/compare_agents.py", f"--steps {args.steps}",
                        f"--baseline-steps {args.baseline_steps}", *args.overrides])
    write_page(doc, "Agents: a calculator tool against no tool on arithmetic levels 2-5",
               "`configs/agent_calc.yaml` (multi-turn episodes, `calculator` tool, 3 turns and 200 tokens per "
               "episode at most, two worked examples in the conversation) against `configs/agent_calc_notool.yaml` "
               "(single-turn GRPO, same instruction, sampling and optimiser): SmolLM2-135M-Instruct, 8 prompts x 8 "
               "samples per step, lr 1e-5 cosine over each run's steps, seed 0; held-out greedy accuracy on the same "
               "200 problems of levels 2-5 (50 per level). The baseline gets more steps so that both train for about "
               "the same CPU time.", command, image, "held-out accuracy against training minutes; tool use",
               ["run", "steps", "training minutes", "acc@0 (%)", "final acc (%) +- s.e.",
                *(f"level {k} (%)" for k in LEVELS), "tool calls / episode", "tool errors / episode"],
               rows, notes + args.remark)
    return 0


if __name__ == "__main__":
    sys.exit(main())
