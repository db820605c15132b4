"""The report of scripts/bench_vs_trl.py: ``<base>.json`` (everything measured) and
``<base>.md`` (the tables, the setup, what differs between the libraries, the remarks).
"""
from __future__ import annotations

import json
from pathlib import Path

from _bench_common import fmt
from _bench_plan import COMBOS, PHASES

# ---------------------------------------------------------------- report

def command_line(argv: list[str]) -> str:
    """The command as run, with each ``--remark`` text shown as ``...`` (the Remarks section has it)."""
    shown, skip = [], False
    for arg in argv:
        shown.append("..." if skip else arg.split("=", 1)[0] + "=..." if arg.startswith("--remark=") else arg)
        skip = arg == "--remark"
    return " ".join(["python", "scripts/bench_vs_trl.py", *shown])


def write_report(path_base: Path, data: dict) -> None:
    """``<base>.json`` (everything) and ``<base>.md`` (tables)."""
    path_base.parent.mkdir(parents=True, exist_ok=True)
    path_base.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str))
    path_base.with_suffix(".md").write_text("\n".join(markdown(data)) + "\n")


def markdown(d: dict) -> list[str]:
    m, s = d["machine"], d["settings"]
    gpu = ", ".join(f"{g['name']} ({g['memory_gb']} GB)" for g in m["gpus"]) or "none"
    lines = [f"# rlkit vs TRL: GRPO step benchmark ({d['date']}, {d['machine_tag']})", "",
             f"Command: `{d['command']}`{' (quick mode: a check of the script, not a benchmark)' if s['quick'] else ''}", "",
             "## Machine", "",
             f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram_gb']} GB; GPU: {gpu}",
             f"- Precision: {m['precision']} ({precision_note(m)})",
             f"- Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
             f"- Load average at start {m['load_average_at_start']}, at end {d['load_average_at_end']}"
             f"{' -- the machine was busy: other processes shared its cores' if busy(d) else ''}",
             f"- Total time: {d['total_min']:.1f} min", "",
             "## Setup", "",
             f"- Prompts: the built-in arithmetic task (level 1, `'####'` instruction), rlkit's PromptSampler with "
             f"seed {s['seed']}, fed to TRL in the same order (TRL `shuffle_dataset=False`); chat template in both.",
             f"- Each step: {s['prompts']} prompts x group {s['group']} = {s['prompts'] * s['group']} completions of at "
             f"most {s['length']} tokens, temperature 1.0, top-p 1, no top-k.",
             "- Reward: `rlkit.testing_rewards.vowel_fraction` (share of vowels in the completion) in both; rlkit "
             "trains every row (`train.skip_zero_advantage=false`), as TRL does.",
             f"- Loss: GRPO advantages (group mean/std), PPO clip 0.2, per-sequence token mean (TRL "
             f"`loss_type=\"grpo\"`), beta/KL 0, one pass, one AdamW step per batch (lr {s['lr']}, betas 0.9/0.999, "
             f"weight decay 0, grad clip 1.0, constant LR), the whole batch in one micro-batch, no gradient "
             "checkpointing.",
             f"- Runs: {s['steps']} steps each, the first {s['warmup']} dropped; {s['repeats']} run(s) per "
             "configuration, alternating rlkit and TRL, each in a fresh process. Medians over all measured steps.",
             f"- Torch threads per process: {s['threads'] or 'torch default (every core)'}.",
             "- Peak memory: the run's peak resident set size, the in-process vLLM engine included (on CPU vLLM "
             "takes `gpu_memory_utilization` = 0.2 of RAM for its KV cache, so vLLM runs show GBs even for the "
             "tiny model); on CUDA also torch's peak reserved GPU memory.", ""]
    lines += target_lines(d["targets"])
    if any(k[1:] == ("trl", "vllm") for k in run_keys(d)):
        lines += ["TRL's vLLM mode: " + (f"failed on this machine: `{d['trl_vllm_error']}`" if d["trl_vllm_error"]
                                         else "ran (see the tables)"), ""]
    if d["sections"].get("vs_trl"):
        lines += vs_trl_lines(d["sections"]["vs_trl"])
    if d["sections"].get("floor"):
        lines += floor_lines(d["sections"]["floor"])
    if d["sections"].get("scaling"):
        lines += scaling_lines(d["sections"]["scaling"], s)
    if d["sections"].get("ranks"):
        lines += ranks_lines(d["sections"]["ranks"], bool(m["gpus"]))
    lines += ["## What is not the same in both", ""] + [f"- {n}" for n in DIFFERENCES]
    if s.get("remark"):
        lines += ["", "## Remarks", ""] + [f"- {r}" for r in s["remark"]]
    return lines


def busy(d: dict) -> bool:
    """Was the CPU shared with other work when the benchmark started (1-minute load average)?"""
    return d["machine"]["load_average_at_start"][0] > 0.5 * (d["machine"]["cores"] or 1)


def run_keys(d: dict) -> set[tuple]:
    return {(r["model"], r["lib"], r["backend"]) for r in d["runs"]}


def precision_note(m: dict) -> str:
    if m["precision"] == "bf16":
        return ("float32 weights, bf16 autocast for forward/backward in both trainers; rlkit's vLLM holds bf16 "
                "weights")
    return "float32 everywhere (this CPU has no fast bf16)"


def target_lines(items: list[dict]) -> list[str]:
    lines = ["## Targets", "", "| target | met | numbers |", "|---|---|---|"]
    for t in items:
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {met} | {t['numbers']} |")
    return lines + [""]


def vs_trl_lines(sec: dict) -> list[str]:
    lines = ["## 1. rlkit vs TRL", "",
             "| model | params | library / generation | runs x measured steps | median step s | rlkit/TRL "
             "| completion tokens/step | tokens/s | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|"]
    failures = []
    for model, e in sec.items():
        params = f"{e['params'] / 1e6:.1f} M" if e.get("params") else "-"
        for name in (f"{lib}/{b}" for lib, b in COMBOS):
            c = e["configs"].get(name)
            if c is None:
                continue
            if "error" in c:
                failures.append((model, name, c["error"]))
                lines.append(f"| {model} | {params} | {name} | failed | - | - | - | - | - |")
                continue
            r = e.get(f"ratio_{name.split('/')[1]}") if name.startswith("rlkit") else None
            lines.append(f"| {model} | {params} | {name} | {c['runs']} x {c['steps'] // c['runs']} | "
                         f"{fmt(c['step_s'])} | {fmt(r)} | {fmt(c['completion_tokens'], 0)} | "
                         f"{fmt(c['tokens_per_s'], 0)} | {memory(c)} |")
        x = e.get("ratio_rlkit_vllm_over_trl_hf")
        if x is not None:
            lines.append(f"| {model} | {params} | rlkit/vllm vs trl/hf | | | {fmt(x)} | | | |")
    lines += ["", "Time per phase (median s; for TRL, `train` is the rest of the step: loss, backward, "
              "optimizer):", "",
              "| model | library / generation | step | " + " | ".join(PHASES) + " | sync share | rows trained |",
              "|---|---|---|" + "---|" * len(PHASES) + "---|---|"]
    for model, e in sec.items():
        for name in (f"{lib}/{b}" for lib, b in COMBOS):
            c = e["configs"].get(name)
            if not c or "error" in c:
                continue
            ph = c["phases"]
            share = ph.get("sync", 0) / c["step_s"] if c["step_s"] else None
            lines.append(f"| {model} | {name} | {fmt(c['step_s'])} | " +
                         " | ".join(fmt(ph.get(p), 3) for p in PHASES) + f" | {fmt(100 * share, 1, '%')} | "
                         f"{fmt(c.get('trained_rows'), 0)} |")
    checks = [f"{model}: {'yes' if c['same_prompts_as_rlkit'] else '**no**'}" for model, e in sec.items()
              for c in [e["configs"].get("trl/hf") or {}] if c.get("same_prompts_as_rlkit") is not None]
    if checks:
        lines += ["", "TRL generated for exactly rlkit's prompts, step by step (checked in its reward function): "
                  + ", ".join(checks)]
    if failures:
        lines += ["", "Failed configurations:", ""]
        lines += [f"- {model} {name}: `{err}`" for model, name, err in failures]
    return lines + [""]


def memory(c: dict) -> str:
    """Peak RSS, and the peak CUDA memory where there was one."""
    gpu = f" ({fmt(c['peak_gpu_mb'], 0)} on the GPU)" if c.get("peak_gpu_mb") else ""
    return fmt(c.get("peak_rss_mb"), 0) + gpu


def floor_lines(sec: dict) -> list[str]:
    lines = ["## 2. The floor: vLLM generation alone + one forward/backward pass alone", "",
             "| model | generate s | forward/backward s | floor s | floor tokens/step | rlkit vLLM step s "
             "| rlkit tokens/step | rlkit/floor | per completion token |", "|---|---|---|---|---|---|---|---|---|"]
    for model, e in sec.items():
        f, r = e.get("floor") or {}, e.get("rlkit") or {}
        if "error" in f or not f:
            lines.append(f"| {model} | failed: {str(f.get('error'))[:120]} | | | | | | | |")
            continue
        lines.append(f"| {model} | {fmt(f['phases'].get('generate'))} | {fmt(f['phases'].get('forward_backward'))} | "
                     f"{fmt(f['step_s'])} | {fmt(f['completion_tokens'], 0)} | {fmt(r.get('step_s'))} | "
                     f"{fmt(r.get('completion_tokens'), 0)} | {fmt(e.get('ratio'))} | {fmt(e.get('ratio_per_token'))} |")
    return lines + ["", "The floor leaves out the optimizer step, scoring and the weight sync, which a training step "
                        "needs; rlkit's step runs each distinct prompt once (shared prompt prefix), which the plain "
                        "forward/backward here does not. Both run the LM head on completion positions only and take "
                        "log-probs from rlkit's block-wise `token_logprobs`.", ""]


def scaling_lines(sec: dict, settings: dict) -> list[str]:
    lines = [f"## 3. Scaling (rlkit, vLLM generation, {sec['model']}, {sec['prompts']} prompts per step, "
             f"micro-batches of {sec['micro_batch_size']} rows)", "",
             "| group | max length | step s | completion tokens/step | tokens/s | " + " | ".join(PHASES) + " |",
             "|---|---|---|---|---|" + "---|" * len(PHASES)]
    for p in sec["points"]:
        if "error" in p:
            lines.append(f"| {p['group']} | {p['length']} | failed: {str(p['error'])[:100]} |" + " |" * (3 + len(PHASES)))
            continue
        lines.append(f"| {p['group']} | {p['length']} | {fmt(p['step_s'])} | {fmt(p['completion_tokens'], 0)} | "
                     f"{fmt(p['tokens_per_s'], 0)} | " + " | ".join(fmt(p['phases'].get(x), 3) for x in PHASES) + " |")
    lines.append("")
    units = {"length": "s per token of completion length", "group": "s per extra completion per prompt"}
    for name, fit in sec["fits"].items():
        if fit:
            lines.append(f"- {name} sweep: step s = {fit['intercept']:.3f} + {fit['slope']:.5f} x {name} "
                         f"({units[name]}; R^2 {fit['r2']:.3f}; log-log exponent {fmt(fit.get('exponent'))})")
        else:
            lines.append(f"- {name} sweep: fewer than two points, no fit")
    return lines + [""]


def ranks_lines(sec: dict, cuda: bool) -> list[str]:
    how = "scripts/train.sh, one GPU per rank" if cuda else "scripts/train_cpu.sh, DS_ACCELERATOR=cpu, cores split"
    lines = [f"## 4. DeepSpeed ranks ({sec['model']}, ZeRO-2, vLLM per rank, {how}; same global batch)", "",
             "| ranks | median step s | completion tokens/step | tokens/s | largest process peak RSS MiB |",
             "|---|---|---|---|---|"]
    for n, c in sorted(sec["by_ranks"].items()):
        if "error" in c:
            lines.append(f"| {n} | failed: {str(c['error'])[:160]} | | | |")
            continue
        lines.append(f"| {n} | {fmt(c['step_s'])} | {fmt(c['completion_tokens'], 0)} | {fmt(c['tokens_per_s'], 0)} | "
                     f"{memory(c)} |")
    return lines + ["", f"Speedup 1 -> 2 ranks: {fmt(sec.get('speedup'))}x", ""]


DIFFERENCES = [
    "Completion lengths: each library samples its own completions, so a model that stops early (SmolLM2, the tiny "
    "character model) gives different token counts per step; compare tokens/s and completion tokens/step. The "
    "random Qwen2-shaped model almost never samples its end token (49k vocabulary), so its completions are "
    "full length in both. rlkit has no `min_tokens` option, so full length cannot be forced the same way in both.",
    "HF generation precision: TRL's accelerate wraps the model's forward in bf16 autocast, so its `generate` runs "
    "under autocast too; rlkit's `hf` rollout calls `generate` on the float32 policy without autocast. Training "
    "forward/backward is bf16 autocast in both (float32 on CPUs without bf16).",
    "rlkit runs each distinct prompt once per micro-batch (`train.share_prompt_prefix`, a default, the same "
    "gradients). Its other default, skipping the forward/backward of rows whose advantages are all zero, is off "
    "here so that both trainers do the same work; the 'rows trained' column shows the rows rlkit trained per step. "
    "(A first run with the digit-share reward gave the random 50M model all-zero rewards, so rlkit skipped its "
    "whole training phase while TRL did not; that run was discarded.)",
    "Advantage epsilon: TRL divides by std + 1e-4, rlkit by std + 1e-6.",
    "TRL computes token entropies for its logs in every step; rlkit computes them too (entropy metric, in the "
    "same block-wise pass as the log-probs).",
    "TRL's vLLM colocate mode builds its own engine (no enforce_eager, max_num_batched_tokens 4096) and syncs "
    "weights through `model.load_weights`; rlkit's engine uses enforce_eager and `reload_weights`.",
]
