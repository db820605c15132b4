"""MPO's meta-reward (rewards/mpo.py; spec section 8; Kim et al. 2025, arXiv 2504.20157): refined
rubric parsing (never raises), merging, the meta step with stub models, rubric versions in files
and state, and a CPU run through the CLI that rewrites the rubric and resumes with the latest one.

``StubMeta`` is imported by the training child process as ``tests.test_mpo:StubMeta``, so this
module must import without pytest's conftest at module level (conftest helpers are imported
inside the tests).
"""
from __future__ import annotations

import itertools
import json
import random
import types
from pathlib import Path

import pytest

from rewards.judge import Rubric, RubricJudge
from rewards.mpo import MetaReward, atomic_write_json, merge_rubrics, meta_messages, parse_meta_reply, parse_rubric

RUBRIC = [
    {"id": "task_fit", "description": "Does what was asked.", "min": 0, "max": 5},
    {"id": "language", "description": "Fluent and grammatical.", "min": 0, "max": 5},
]


class StubMeta:
    """A deterministic meta model: keeps the current rubric (read back from the prompt) and adds
    ``detail_<k>`` (k = the number of items), so every meta step makes a new version."""

    def __init__(self, **options):
        self.options = options
        self.calls = 0

    def generate(self, prompts, max_tokens, temperature):
        self.calls += 1
        out = []
        for messages in prompts:
            text = messages[-1]["content"]
            current = parse_rubric(text.split("CURRENT RUBRIC:")[1].split("JUDGE'S SCORES")[0])
            k = len(current.items)
            out.append(f"ANALYSIS: the total looks inflated; detail is not rewarded.\n\n**Refined rubric:**\n"
                       f"{current.format()}\n- detail_{k} (0-{k}): Uses concrete detail number {k}.")
        return out


class StubJudge:
    def __init__(self, reply="task_fit: 3 - fine\nlanguage: 4 - ok"):
        self.reply = reply

    def generate(self, prompts, max_tokens, temperature):
        return [self.reply for _ in prompts]


class GarbageMeta:
    def generate(self, prompts, max_tokens, temperature):
        return ["RUBRIC:\n- (5-1): reversed\n\u00e9\u00e8", "no rubric at all", None, "- x (0-1000): too wide"][
            :len(prompts)] + ["" for _ in prompts[4:]]


class FailingMeta:
    def generate(self, prompts, max_tokens, temperature):
        raise TimeoutError("meta endpoint timed out")


def context(run_dir, resume="never"):
    from rlkit.reward_api import RewardContext

    return RewardContext(run_dir=Path(run_dir), resume=resume)


def batch_of(rows):
    return types.SimpleNamespace(rows=rows)


def step(module, n_rows=3, tag="s"):
    """Score ``n_rows`` training rows (plus one eval row that is not in the batch) and update."""
    prompts = [f"Write {tag}{i}" for i in range(n_rows)]
    completions = [f"text {tag}{i}" for i in range(n_rows)]
    module(["eval text"], prompts=["eval prompt"])
    module(completions, prompts=prompts)
    return module.update(batch_of([{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]))


# ------------------------------------------------------------------------------------ parsing and merging

@pytest.mark.parametrize("reply", [
    "ANALYSIS: too generous.\nRUBRIC:\n- clarity (0-5): Clear sentences.\n- rhyme (0-3): Lines rhyme.",
    ("Analysis: too generous.\n\n## Refined Rubric\n1. **clarity** (0 - 5): Clear sentences.\n"
     "2. `rhyme` [0-3] - Lines rhyme."),
    "ANALYSIS: too generous.\nRUBRIC: - clarity (0-5): Clear sentences.\n- Rhyme (0 to 3): Lines rhyme.",
    ('ANALYSIS: too generous.\nRUBRIC:\n[{"id": "clarity", "description": "Clear sentences.", "min": 0, "max": 5},'
     ' {"id": "rhyme", "description": "Lines rhyme.", "range": [0, 3]}]'),
])
def test_parse_meta_reply_forms(reply):
    analysis, rubric = parse_meta_reply(reply)
    assert analysis == "too generous."
    assert rubric is not None and rubric.ids == ["clarity", "rhyme"]
    assert [(i.min, i.max) for i in rubric.items] == [(0, 5), (0, 3)]
    assert rubric.items[1].description == "Lines rhyme."


@pytest.mark.parametrize("reply", [
    "", "ANALYSIS: fine as it is.", "RUBRIC:\n- clarity (5-0): reversed range", "- 123 (0-5): no letters in id",
    "- clarity (0-5): ab", "- clarity (0-500): range too wide", "RUBRIC: [1, 2, 3]", None, 17,
])
def test_malformed_refined_rubrics_are_none(reply):
    assert parse_meta_reply(reply)[1] is None


def test_rubric_parser_never_raises():
    rng = random.Random(7)
    pieces = ["RUBRIC:", "- ", "clarity", " (", "0", "-", "5", ")", ": ", "desc", "\n", "[", "{", '"id"', '"min"',
              ":", ",", "]", "}", "\u00e9", "\U0001f600", "1e999", "nan", "**", "to", "..", "\x00"]
    for case in range(1500):
        if case % 2:
            text = "".join(rng.choice(pieces) for _ in range(rng.randrange(60)))
        else:
            text = bytes(rng.randrange(256) for _ in range(rng.randrange(300))).decode("utf-8", errors="replace")
        analysis, rubric = parse_meta_reply(text)
        assert isinstance(analysis, str)
        if rubric is not None:
            assert all(item.min < item.max and item.id for item in rubric.items)
    assert parse_meta_reply("[" * 40000)[1] is None


def test_merge_rubrics_dedups_orders_and_caps():
    current = Rubric.from_list(RUBRIC)
    a = Rubric.from_list([{"id": "rhyme", "description": "Lines rhyme.", "min": 0, "max": 3},
                          {"id": "language", "description": "Fluent, grammatical, no typos.", "min": 0, "max": 5}])
    b = Rubric.from_list([{"id": "task_fit", "description": "Does what was asked.", "min": 0, "max": 4},
                          {"id": "rhymes", "description": "LINES   rhyme!", "min": 0, "max": 2},     # same description
                          {"id": "rhyme", "description": "Another rhyme item.", "min": 0, "max": 9},  # same id
                          {"id": "imagery", "description": "Concrete images.", "min": 0, "max": 5}])
    merged = merge_rubrics(current, [a, b], max_items=8)
    assert merged.ids == ["task_fit", "language", "rhyme", "imagery"]   # the current ids first, in their order
    assert merged.items[0].max == 4 and merged.items[1].description == "Fluent, grammatical, no typos."
    assert merge_rubrics(current, [a, b], max_items=3).ids == ["task_fit", "language", "rhyme"]
    assert merge_rubrics(current, []) is current


def test_meta_prompt_shows_scores_and_rubric():
    rubric = Rubric.from_list(RUBRIC)
    row = {"prompt": "Write a haiku.", "completion": "Leaves fall", "scores": [4.0, 2.5],
           "rationales": ["on topic", ""]}
    text = meta_messages(rubric, row, max_items=6)[-1]["content"]
    assert "Write a haiku." in text and "Leaves fall" in text and "at most 6 items" in text
    assert "- task_fit: 4 of 5 - on topic" in text and "- language: 2.5 of 5 - (no rationale)" in text
    assert "total 6.5 of 10" in text and "- task_fit (0-5): Does what was asked." in text


# ------------------------------------------------------------------------------------ the module

def make_meta(**kwargs):
    options = {"rubric": RUBRIC, "client": StubJudge(), "meta_client": "test_mpo:StubMeta", "every": 2,
               "sample_size": 2}
    options.update(kwargs)
    return MetaReward(**options)


def test_meta_step_every_n_updates_writes_versions(tmp_path):
    module = make_meta()
    module.attach(context(tmp_path))
    assert json.loads((tmp_path / "rubrics" / "v0.json").read_text())["items"] == RUBRIC
    first = step(module, tag="a")
    assert first["rubric_version"] == 0 and "rubric_changed" not in first
    assert first["judged_rows"] == 4 and first["parse_failures"] == 0      # the eval row was scored too
    second = step(module, tag="b")
    assert second["rubric_changed"] == 1 and second["rubric_version"] == 1
    assert second["max_score_before"] == 10 and second["max_score_after"] == 12 == second["max_score"]
    assert second["meta_samples"] == 2 and second["meta_invalid"] == 0 and second["rubric_items"] == 3
    assert module.judge.rubric.ids == ["task_fit", "language", "detail_2"]
    for _ in range(2):
        step(module, tag="c")
    assert module.version == 2 and module.rubric.ids[-1] == "detail_3"
    saved = json.loads((tmp_path / "rubrics" / "v2.json").read_text())
    assert saved["items"] == module.rubric.to_list() and saved["version"] == 2 and saved["update"] == 4
    assert saved["analyses"][0].startswith("the total looks inflated") and saved["max_score"] == 15
    assert sorted(p.name for p in (tmp_path / "rubrics").iterdir()) == ["v0.json", "v1.json", "v2.json"]


def test_only_training_rows_reach_the_meta_model(tmp_path):
    seen = []

    class Recorder(StubMeta):
        def generate(self, prompts, max_tokens, temperature):
            seen.extend(p[-1]["content"] for p in prompts)
            return super().generate(prompts, max_tokens, temperature)

    module = make_meta(meta_client=Recorder(), every=1, sample_size=10)
    step(module, n_rows=3, tag="t")
    assert len(seen) == 3 and not any("eval prompt" in s for s in seen)
    assert all("JUDGE'S SCORES (total 7 of 10)" in s and "- language: 4 of 5 - ok" in s for s in seen)


def test_garbage_or_failing_meta_keeps_the_rubric(tmp_path):
    module = make_meta(meta_client=GarbageMeta(), every=1, sample_size=4)
    module.attach(context(tmp_path))
    metrics = step(module, n_rows=4)
    assert metrics["rubric_changed"] == 0 and metrics["meta_invalid"] == 4 and module.version == 0
    assert module.rubric == Rubric.from_list(RUBRIC)
    failing = make_meta(meta_client=FailingMeta(), every=1)
    assert step(failing)["rubric_changed"] == 0 and failing.version == 0
    assert step(make_meta(every=1), n_rows=0)["meta_samples"] == 0   # nothing to sample: no meta call


def test_meta_model_same_shares_the_judge_client():
    module = make_meta(meta_client=None, meta_model="same")
    assert module.meta is module.judge.client
    own = make_meta(meta_client={"client": "test_mpo:StubMeta", "tag": 1})
    assert isinstance(own.meta, StubMeta) and own.meta.options == {"tag": 1}
    with pytest.raises(ValueError, match="meta_model other than 'same' needs meta_client"):
        make_meta(meta_client=None, meta_model="other-model")
    with pytest.raises(ValueError, match="every"):
        make_meta(every=0)


def test_state_dict_round_trip_through_torch_save(tmp_path):
    import torch

    module = make_meta(every=1)
    module.attach(context(tmp_path / "run"))
    for tag in "abc":
        step(module, tag=tag)
    module(["left over"], prompts=["p"])
    module.update(batch_of([{"prompt": "p", "completion": "left over"}]))  # the 4th update: another version
    state = module.state_dict()
    torch.save(state, tmp_path / "reward.pt")
    loaded = torch.load(tmp_path / "reward.pt", weights_only=True)
    assert [v["version"] for v in loaded["versions"]] == [0, 1, 2, 3, 4]

    fresh = make_meta(every=1, rubric=[{"id": "other", "description": "Ignored on resume.", "min": 0, "max": 1}])
    fresh.attach(context(tmp_path / "run", resume="auto"))
    fresh.load_state_dict(loaded)
    assert fresh.rubric == module.rubric and fresh.version == 4 and fresh.updates == module.updates
    step(fresh, tag="d")
    assert fresh.version == 5 and fresh.rubric.ids[:-1] == module.rubric.ids   # continues from the latest


def test_resume_from_an_older_checkpoint_moves_later_versions_aside(tmp_path):
    module = make_meta(every=1)
    module.attach(context(tmp_path))
    step(module, tag="a")
    old_state = module.state_dict()
    step(module, tag="b")
    step(module, tag="c")
    folder = tmp_path / "rubrics"
    assert (folder / "v3.json").exists()
    resumed = make_meta(every=1)
    resumed.attach(context(tmp_path, resume="auto"))
    resumed.load_state_dict(old_state)
    assert sorted(p.name for p in folder.glob("v*.json")) == ["v0.json", "v1.json"]
    stale = list(folder.glob("stale-*/v*.json"))
    assert sorted(p.name for p in stale) == ["v2.json", "v3.json"]


def test_fresh_run_moves_an_old_rubrics_folder_aside(tmp_path):
    (tmp_path / "rubrics").mkdir()
    (tmp_path / "rubrics" / "v7.json").write_text("{}")
    module = make_meta()
    module.attach(context(tmp_path, resume="auto"))          # auto, but no checkpoint: a fresh start
    step(module)
    assert sorted(p.name for p in (tmp_path / "rubrics").iterdir()) == ["v0.json"]
    assert [p.name for p in tmp_path.glob("rubrics.*/v7.json")] == ["v7.json"]


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "v1.json", {"a": 1})
    atomic_write_json(tmp_path / "v1.json", {"a": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["v1.json"]
    assert json.loads((tmp_path / "v1.json").read_text()) == {"a": 2}


def test_metareward_is_a_rubric_judge_reward():
    module = make_meta()
    assert module(["x", "y"], prompts=["p", "q"], completion_ids=[[1], [2]], answer=[None, None]) == [7.0, 7.0]
    assert isinstance(module.judge, RubricJudge)


# ------------------------------------------------------------------------------------ a run on CPU, then a resume

def mpo_overrides(tiny_model: str, steps: int, **extra) -> list[str]:
    from conftest import tiny_overrides

    kwargs = (f"client: hf, model: '{tiny_model}', max_tokens: 8, temperature: 1.0, every: 1, sample_size: 3, "
              "meta_client: 'tests.test_mpo:StubMeta', "
              "rubric: [{id: task_fit, description: 'Does what was asked.', min: 0, max: 5}]")
    function = f"{{fn: 'rewards.mpo:MetaReward', name: judge, kwargs: {{{kwargs}}}}}"
    return tiny_overrides(tiny_model, train__steps=steps, rewards__functions=f"[{function}]", **extra)


def train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_mpo_run_rewrites_the_rubric_and_resumes_with_the_latest(tiny_model, tmp_path):
    import torch
    from conftest import REPO_ROOT, run_cli

    config = REPO_ROOT / "configs" / "mpo_writing.yaml"
    run_dir = tmp_path / "run"
    first = run_cli(mpo_overrides(tiny_model, 2), run_dir, config=config, timeout=600)
    assert first.returncode == 0, first.describe()
    records = train_records(run_dir)
    assert [r["judge/rubric_version"] for r in records] == [1, 2]          # rewritten at both steps
    assert [r["judge/rubric_items"] for r in records] == [2, 3]
    assert [r["judge/max_score_before"] for r in records] == [5, 6]
    assert [r["judge/max_score_after"] for r in records] == [6, 8]
    assert all(r["judge/judged_rows"] == 8 for r in records[1:])            # 2 prompts x 4 samples

    second = run_cli(mpo_overrides(tiny_model, 4, train__resume="auto"), run_dir, config=config, timeout=600)
    assert second.returncode == 0, second.describe()
    records = train_records(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["judge/rubric_version"] for r in records] == [1, 2, 3, 4]    # the resumed run went on from v2
    folder = run_dir / "rubrics"
    assert sorted(p.name for p in folder.glob("v*.json")) == [f"v{k}.json" for k in range(5)]
    versions = [json.loads((folder / f"v{k}.json").read_text()) for k in range(5)]
    for before, after in itertools.pairwise(versions):
        assert after["items"][:-1] == before["items"]                       # each version grows the previous one
    state = torch.load(run_dir / "checkpoints" / "step_4" / "reward.pt", weights_only=True)["judge"]
    assert [v["version"] for v in state["versions"]] == [0, 1, 2, 3, 4]
    assert state["versions"][-1]["items"] == versions[-1]["items"]         # the judge's rubric = the last saved
    assert [item["id"] for item in versions[-1]["items"]] == ["task_fit", "detail_1", "detail_2", "detail_3",
                                                               "detail_4"]
