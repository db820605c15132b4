"""Config loading: YAML with include:, dotted overrides, clear errors, round trip, shipped configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from rlkit.config import (
    AlgoConfig,
    Config,
    ConfigError,
    RewardSpec,
    check_config,
    config_to_dict,
    load_config,
    save_config,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- include and overrides

def test_defaults_without_a_file():
    assert load_config() == Config()
    assert load_config(None, []) == Config()


def test_include_relative_path_and_including_file_wins(tmp_path):
    write(tmp_path / "presets" / "algo" / "base.yaml", (
        "algo:\n  advantage: rloo\n  eps_high: 0.28\n  kl_coef: 0.05\n"
        "train:\n  steps: 7\n  lr: 1.0e-4\n"))
    main = write(tmp_path / "presets" / "run.yaml", (
        "include:\n  - algo/base.yaml\n"           # relative to run.yaml, not to the cwd
        "algo:\n  kl_coef: 0.0\n"                   # the including file overrides the include
        "train:\n  lr: 3.0e-4\n"))
    cfg = load_config(main)
    assert cfg.algo.advantage == "rloo"              # from the include
    assert cfg.algo.eps_high == pytest.approx(0.28)  # from the include
    assert cfg.algo.kl_coef == 0.0                   # overridden
    assert cfg.train.steps == 7                      # deep merge keeps sibling keys
    assert cfg.train.lr == pytest.approx(3e-4)


def test_later_includes_override_earlier_ones(tmp_path):
    write(tmp_path / "a.yaml", "train:\n  steps: 1\n  seed: 11\n")
    write(tmp_path / "b.yaml", "train:\n  steps: 2\n")
    cfg = load_config(write(tmp_path / "run.yaml", "include: [a.yaml, b.yaml]\n"))
    assert (cfg.train.steps, cfg.train.seed) == (2, 11)


def test_overrides_beat_the_file(tmp_path):
    path = write(tmp_path / "run.yaml", "train:\n  steps: 5\n  lr: 1.0e-5\n")
    cfg = load_config(path, ["train.steps=9"])
    assert cfg.train.steps == 9 and cfg.train.lr == pytest.approx(1e-5)


def test_dotted_override_types():
    cfg = load_config(None, [
        "train.lr=1e-3",                 # YAML 1.1 reads this as a string; the float field converts it
        "train.weight_decay=0",          # int -> float field
        "data.levels=[1,2]",
        "data.eval_levels=[3]",
        "train.betas=[0.8, 0.95]",
        "model.autocast_bf16=false",
        "algo.dual_clip=3",
        "model.reference=null",
        "algo.advantage_kwargs={eps: 0.001}",
        "rewards.functions=[{fn: 'rlkit.testing_rewards:char_fraction', weight: 0.5, kwargs: {chars: '3'}},"
        " {fn: 'rewards.math:correctness', name: acc}]",
    ])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.weight_decay == 0.0 and isinstance(cfg.train.weight_decay, float)
    assert cfg.data.levels == (1, 2) and isinstance(cfg.data.levels, tuple)
    assert cfg.data.eval_levels == (3,)
    assert cfg.train.betas == (0.8, 0.95)
    assert cfg.model.autocast_bf16 is False
    assert cfg.algo.dual_clip == 3.0 and isinstance(cfg.algo.dual_clip, float)
    assert cfg.model.reference is None
    assert cfg.algo.advantage_kwargs == {"eps": 0.001}
    assert cfg.rewards.functions == (
        RewardSpec(fn="rlkit.testing_rewards:char_fraction", weight=0.5, kwargs={"chars": "3"}),
        RewardSpec(fn="rewards.math:correctness", name="acc"),
    )
    assert isinstance(cfg.rewards.functions, tuple)


def test_scalar_becomes_one_element_tuple():
    assert load_config(None, ["data.levels=2"]).data.levels == (2,)


def test_override_value_may_contain_equals():
    cfg = load_config(None, ["data.instruction=Answer as '#### x=...'"])
    assert cfg.data.instruction == "Answer as '#### x=...'"


def test_override_into_an_empty_yaml_section(tmp_path):
    path = write(tmp_path / "run.yaml", "train:\nalgo:\n  kl_coef: 0.1\n")
    assert load_config(path).train == load_config().train          # an empty section is fine
    assert load_config(path, ["train.steps=3"]).train.steps == 3


def test_include_as_a_single_string(tmp_path):
    write(tmp_path / "one.yaml", "train:\n  steps: 4\n")
    path = write(tmp_path / "run.yaml", "include: one.yaml\n")
    try:
        cfg = load_config(path)
    except ConfigError as exc:                   # rejecting it clearly would also be fine
        assert "include" in str(exc) and "list" in str(exc)
    else:
        assert cfg.train.steps == 4


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(None, ["train.steps"])


# ---------------------------------------------------------------- errors name the key

def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["train.lrr=1e-3"])
    msg = str(exc.value)
    assert "lrr" in msg and "did you mean" in msg and "'train.lr'" in msg


def test_unknown_section_suggests_the_close_one():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["trian.steps=3"])
    assert "trian" in str(exc.value) and "did you mean" in str(exc.value) and "'train'" in str(exc.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "rollout:\n  num_sample: 4\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert str(path) in msg and "num_sample" in msg and "did you mean" in msg and "num_samples" in msg


def test_unknown_key_without_a_close_match_lists_the_valid_keys():
    with pytest.raises(ConfigError, match="valid keys:.*steps"):
        load_config(None, ["train.zzzzzz=1"])


def test_unknown_nested_key_inside_reward_list():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["rewards.functions=[{fn: 'rewards.math:correctness', wieght: 2.0}]"])
    msg = str(exc.value)
    assert "rewards.functions[0]" in msg and "wieght" in msg
    assert "did you mean" in msg and "weight" in msg


def test_unknown_nested_key_in_second_reward_names_index_1():
    with pytest.raises(ConfigError, match=r"rewards\.functions\[1\].*kwarg"):
        load_config(None, ["rewards.functions=[{fn: 'a:b'}, {fn: 'c:d', kwarg: {}}]"])


@pytest.mark.parametrize("override, key", [
    ("train.steps=abc", "train.steps"),
    ("train.steps=true", "train.steps"),          # bool is not an int here
    ("train.lr=fast", "train.lr"),
    ("model.autocast_bf16=1", "model.autocast_bf16"),
    ("algo.advantage_kwargs=[1, 2]", "algo.advantage_kwargs"),
    ("train.betas=[0.9]", "train.betas"),
    ("data.levels=[1, x]", "data.levels[1]"),
    ("rollout=3", "rollout"),
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert key in str(exc.value)


@pytest.mark.parametrize("overrides, key", [
    (["rollout.backend=vllmm"], "rollout.backend"),
    (["backend.name=fsdp"], "backend.name"),
    (["rollout.num_samples=0"], "rollout.num_samples"),
    (["train.prompts_per_step=3", "rollout.num_samples=2", "algo.mini_batches=4"], "algo.mini_batches"),
    (["data.task=jsonl"], "data.path"),
    (["data.task=csv"], "data.task"),
    (["model.dtype=float16"], "model.dtype"),
    (["train.lr_schedule=step"], "train.lr_schedule"),
    (["rewards.functions=[]"], "rewards.functions"),
    (["algo.epochs=0"], "algo"),
])
def test_cross_field_checks(overrides, key):
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides)
    assert key in str(exc.value)


def test_mini_batches_that_divide_are_fine():
    cfg = load_config(None, ["train.prompts_per_step=3", "rollout.num_samples=2", "algo.mini_batches=3"])
    assert cfg.algo.mini_batches == 3


def test_missing_config_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "run.yaml"
    with pytest.raises(ConfigError, match="not found") as exc:
        load_config(missing)
    assert str(missing) in str(exc.value)


def test_missing_include_names_the_included_path(tmp_path):
    path = write(tmp_path / "run.yaml", "include: [algo/missing.yaml]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(tmp_path / "algo" / "missing.yaml") in str(exc.value)


def test_include_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "include: [b.yaml]\n")
    write(tmp_path / "b.yaml", "include: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_invalid_yaml_names_the_file(tmp_path):
    path = write(tmp_path / "broken.yaml", "train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML") as exc:
        load_config(path)
    assert str(path) in str(exc.value)


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------- saved config round trip

def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, [
        "model.path=/models/tiny", "model.reference=/models/ref", "model.autocast_bf16=false",
        "data.levels=[1, 2, 3]", "data.eval_levels=[4]", "data.system_prompt=Be brief.",
        "data.instruction=Answer after '####'.",
        "rollout.backend=hf", "rollout.temperature=0.7", "rollout.dtype=float32",
        "algo.advantage=grpo", "algo.advantage_kwargs={eps: 1.0e-6}", "algo.dual_clip=3.0",
        "algo.kl_coef=0.01", "algo.mini_batches=2",
        "train.lr=2e-4", "train.betas=[0.9, 0.95]", "train.threads=1", "train.lr_schedule=cosine",
        "rewards.functions=[{fn: 'rlkit.testing_rewards:char_fraction', name: sevens, weight: 0.5,"
        " kwargs: {chars: '7'}}, {fn: 'rewards.math:correctness', pool: true}]",
        "rewards.accuracy_component=null", "eval.every=5",
    ])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)
    save_config(again, tmp_path / "again.yaml")
    assert (tmp_path / "again.yaml").read_text() == path.read_text()


def test_default_config_round_trips(tmp_path):
    save_config(Config(), tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == Config()


def test_configs_are_frozen():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.train.steps = 3  # type: ignore[misc]


# ---------------------------------------------------------------- shipped configs

def test_grpo_arith_config_loads():
    cfg = load_config(REPO_ROOT / "configs" / "grpo_arith.yaml")
    check_config(cfg)
    assert cfg.data.task == "arith"
    assert cfg.algo.advantage == "grpo"        # from the included algo/grpo.yaml
    assert cfg.rewards.functions[0].fn == "rewards.math:correctness"


ALGO_PRESETS = sorted((REPO_ROOT / "configs" / "algo").glob("*.yaml"))


def test_algo_presets_exist():
    assert ALGO_PRESETS, "configs/algo/ has no presets"


@pytest.mark.parametrize("preset", ALGO_PRESETS, ids=lambda p: p.name)
def test_algo_preset_loads(preset):
    from rlkit.algorithms.advantages import get_advantage
    from rlkit.algorithms.losses import AGGREGATION_MODES, KL_ESTIMATORS, get_loss

    cfg = load_config(preset)
    assert cfg.algo != AlgoConfig() or preset.stem == "grpo"
    get_advantage(cfg.algo.advantage)   # names in the preset are registered
    get_loss(cfg.algo.loss)
    assert cfg.algo.loss_agg in AGGREGATION_MODES and cfg.algo.kl_estimator in KL_ESTIMATORS


@pytest.mark.parametrize("preset", ALGO_PRESETS, ids=lambda p: p.name)
def test_algo_preset_can_be_included(tmp_path, preset):
    path = write(tmp_path / "run.yaml", f"include: ['{preset}']\ntrain:\n  steps: 2\n")
    cfg = load_config(path)
    assert cfg.algo == load_config(preset).algo and cfg.train.steps == 2


@pytest.mark.parametrize("override,key", [
    ("algo.rollout_correction=tis", "algo.rollout_correction"),
    ("algo.kl_mode=both", "algo.kl_mode"),
    ("algo.rollout_mask_band=[2.0,0.5]", "algo.rollout_mask_band"),
    ("algo.max_sampling_rounds=0", "algo.max_sampling_rounds"),
    ("algo.overlong_buffer=100", "algo.overlong_buffer"),
    ("rollout.backend=server", "rollout.backend"),
])
def test_new_algo_and_rollout_settings_are_checked(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_server_mode_settings_are_checked():
    base = ["rollout.backend=vllm_server"]
    with pytest.raises(ConfigError, match=r"rollout\.server_url"):
        load_config(None, base + ["rollout.server_url=localhost:8000"])
    with pytest.raises(ConfigError, match="tensor parallelism on the server"):
        load_config(None, base + ["rollout.tensor_parallel_size=2"])
    with pytest.raises(ConfigError, match=r"rollout\.weight_transfer"):
        load_config(None, base + ["rollout.weight_transfer=tcp"])
    cfg = load_config(None, base + ["critic.lr=3e-6", "algo.overlong_buffer=0.25"])
    assert cfg.critic.lr == 3e-6 and cfg.rollout.server_url.startswith("http://")


SHIPPED = sorted((REPO_ROOT / "configs").glob("*.yaml")) + sorted((REPO_ROOT / "configs" / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO_ROOT / "configs")))
def test_shipped_config_passes_the_load_checks(path):
    """Every shipped config and ablation loads and passes the checks ``rlkit train`` makes at load
    (reward kwargs against signatures, components, agent settings)."""
    cfg = load_config(path)
    check_config(cfg)
    if "ablations" in path.parts:
        assert cfg.train.output_dir.startswith("runs/") and path.stem in cfg.train.output_dir
