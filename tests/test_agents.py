"""Multi-turn episodes (rlkit/agents): token-in-token-out bookkeeping, the loss mask on
environment tokens, contained tools, turn rewards through credit assignment, bad input.

The bookkeeping tests drive episodes with a scripted policy (tests/helpers/agent_kit.py) on the
tiny model's character tokenizer, so every expected id is written out; the real engines (hf
here, vLLM and the vLLM server in their own tests) run the same runner with sampled tokens.
"""
from __future__ import annotations

import os

import pytest
import torch

from helpers.agent_kit import CALLS_FILE, ScriptedPolicy
from rlkit.agents import EnvTypeError, ToolError, build_runner, episode_metrics, episode_rows
from rlkit.agents.calc import calculator
from rlkit.agents.tools import parse_tool_calls
from rlkit.batch import build_batch
from rlkit.config import AgentConfig, ConfigError, RewardsConfig, RewardSpec, load_config
from rlkit.rollout import Sampling

CALL_ADD = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'


@pytest.fixture(scope="module")
def tok(tiny_model):
    from rlkit.models import load_tokenizer

    return load_tokenizer(tiny_model)


def _runner(policy, tok, env="helpers.agent_kit:ToolEnv", **kw):
    return build_runner(AgentConfig(env=env, **kw), policy, tok)


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_token_in_token_out_and_the_loss_mask(tok):
    """Turn 2's input is exactly the prompt, turn 1's sampled ids and the environment's ids;
    the episode holds those ids in that order, and loss_mask is True exactly on sampled ids."""
    policy = ScriptedPolicy(tok, [CALL_ADD, "It is 5<eos>"])
    runner = _runner(policy, tok)
    (ep,) = runner.run([{"prompt": "2+3?", "answer": "5"}], Sampling(n=1, max_new_tokens=80))
    runner.executor.close()
    turn1, turn2 = _ids(tok, CALL_ADD), _ids(tok, "It is 5") + [tok.eos_token_id]
    # The template writes "<s>role: content</s>\n": the turn stopped at </tool_call>, so the
    # environment closes the assistant message, adds the tool message and the next header.
    env = _ids(tok, "</s>\n<s>tool: 5</s>\n<s>assistant: ")
    assert policy.calls[1] == [ep.prompt_ids + turn1 + env]
    assert ep.token_ids == turn1 + env + turn2
    assert ep.model_mask == [True] * len(turn1) + [False] * len(env) + [True] * len(turn2)
    assert [t.stop for t in ep.turns] == ["tool_call", "eos"] and ep.done and not ep.truncated
    assert ep.text == "It is 5" and ep.turn_ends == [len(turn1), len(turn1) + len(turn2)]
    assert [m["role"] for m in ep.messages] == ["user", "assistant", "tool", "assistant"]
    batch = build_batch([ep.prompt_ids], [ep.token_ids], [0], [True], tok.pad_token_id,
                        rollout_logprobs=[ep.logprobs], completion_masks=[ep.model_mask])
    batch.validate()
    p = len(ep.prompt_ids)
    assert batch.input_ids[0, :p + len(ep.token_ids)].tolist() == ep.prompt_ids + ep.token_ids
    expected = torch.zeros(batch.input_ids.shape[1], dtype=torch.bool)
    expected[p:p + len(turn1)] = True
    expected[p + len(turn1) + len(env):p + len(ep.token_ids)] = True
    assert torch.equal(batch.loss_mask[0], expected)
    sampled_lps = [-0.5 - 0.01 * j for j in range(len(turn1))]  # the scripted engine log-probs
    assert batch.rollout_logprobs[0, p:p + len(turn1)].tolist() == pytest.approx(sampled_lps)
    assert episode_metrics([ep])["agent/model_token_frac"] == pytest.approx(
        (len(turn1) + len(turn2)) / len(ep.token_ids))


def test_a_turn_that_sampled_eos_gets_only_the_rest_of_the_closing(tok):
    """After an EOS the model sampled, the environment adds "\\n" (not a second </s>)."""
    policy = ScriptedPolicy(tok, ["hi<eos>", "bye<eos>"])
    runner = _runner(policy, tok, env="helpers.agent_kit:TalkEnv", env_kwargs={"turns": 2})
    (ep,) = runner.run([{"prompt": "x"}], Sampling(n=1, max_new_tokens=20))
    hi = _ids(tok, "hi") + [tok.eos_token_id]
    assert ep.token_ids[len(hi):len(ep.token_ids) - 4] == _ids(tok, "\n<s>user: go on 0</s>\n<s>assistant: ")


def test_tools_that_raise_hang_or_flood_are_contained(tok):
    """Each failure is an error observation the model reads; the episode goes on; a 10 MB result
    is cut in the worker; the tool's side effects stay in its worker process."""
    calls = "\n".join(['{"name": "boom", "arguments": {"x": 1}}', '{"name": "hang", "arguments": {"x": 1}}',
                       '{"name": "huge", "arguments": {"x": 1}}', '{"name": "add", "arguments": {"a": 1, "b": 2}}',
                       '{"name": "add", "arguments": {"a": 1}}', '{"name": "nope", "arguments": {}}',
                       '{"name": "add", "arguments": [1, 2]}', "{not json"])
    policy = ScriptedPolicy(tok, [f"<tool_call>\n{calls}\n</tool_call>", "done<eos>"])
    runner = _runner(policy, tok, tool_timeout_s=1.0, max_observation_chars=100, max_episode_tokens=2000)
    os.environ.pop(CALLS_FILE, None)
    (ep,) = runner.run([{"prompt": "go"}], Sampling(n=1, max_new_tokens=600))
    results = ep.turns[0].tool_results
    runner.executor.close()
    assert [r.ok for r in results] == [False, False, True, True, False, False, False, False]
    assert "tool exploded on 1" in results[0].content
    assert "timed out" in results[1].content
    assert results[2].content.startswith("y" * 100) and "cut: 10485760 characters" in results[2].content
    assert results[3].content == "3"
    assert "missing b" in results[4].content and "unknown tool 'nope'" in results[5].content
    assert "arguments must be a JSON object" in results[6].content and "not JSON" in results[7].content
    assert CALLS_FILE not in os.environ          # the add call ran in a worker process
    assert len(ep.turns) == 2 and ep.text == "done"
    assert episode_metrics([ep])["agent/tool_errors"] == 6


def test_parser_is_strict_about_the_layout():
    assert parse_tool_calls("no call") == []
    (one,) = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>')
    assert (one.name, one.arguments, one.error) == ("f", {"a": 1}, None)
    assert parse_tool_calls("<tool_call>\n\n</tool_call>")[0].error == "empty <tool_call> block"
    assert parse_tool_calls('<tool_call>\n{"name": "f"')[0].error == "<tool_call> without </tool_call>"
    assert parse_tool_calls('<tool_call>\n{"arguments": {}}\n</tool_call>')[0].error is not None


@pytest.mark.parametrize("expression,expected", [
    ("347 + 589", "936"), ("(12 + 7) * 3", "57"), ("7 / 2", "3.5"), ("1,000 - 1", "999"), ("2 ** 10", "1024"),
    ("-4 * -4", "16"), ("10 // 3", "3"), ("10 % 4", "2"), ("1 / 3", "0.333333"),
])
def test_calculator_computes_exactly(expression, expected):
    assert calculator(expression) == expected


@pytest.mark.parametrize("expression", [
    "__import__('os').system('true')", "open('/etc/passwd')", "x + 1", "2 ** 1000", "9 ** 9 ** 9", "1 / 0",
    "'a' * 3", "[1, 2]", "", "1e400", "(1" * 300,
])
def test_calculator_refuses_what_is_not_arithmetic(expression):
    assert calculator(expression).startswith("Error:")


def test_turn_rewards_land_on_their_turns_through_the_credit_assignment(tok):
    """Turn rewards 0.5 then 1.0, outcome 0.  On each turn's last sampled token: sum -> 0.5 and
    1.0; strict min form -> returns min(0.5, 1.0) = 0.5 and 1.0, i.e. rewards -0.5 and 1.0;
    delta -> 0.5 - 1.0 = -0.5 and 0.  GAE with gamma = lambda = 1 and zero values gives every
    token of a turn the return from its turn on; environment tokens get 0."""
    from rlkit.algorithms.advantages import gae
    from rlkit.scoring import build_reward, score_batch

    expected = {"sum": (1.5, 1.0), "min_form": (0.5, 1.0), "delta": (-0.5, 0.0)}
    for credit, (adv1, adv2) in expected.items():
        policy = ScriptedPolicy(tok, ["ab<eos>", "cd<eos>"])
        agent = AgentConfig(env="helpers.agent_kit:TalkEnv", env_kwargs={"turns": 2}, turn_credit=credit,
                            turn_credit_kwargs={"min_form": "strict"} if credit == "min_form" else {})
        runner = build_runner(agent, policy, tok)
        episodes = runner.run([{"prompt": "x", "answer": "?"}], Sampling(n=1, max_new_tokens=8))
        for e in episodes:  # TalkEnv rewards turn k with k: make them 0.5 and 1.0
            e.turn_rewards = [0.5, 1.0]
        reward = build_reward(RewardsConfig(functions=(RewardSpec(fn="helpers.agent_kit:zero_outcome"),)), agent)
        batch = build_batch([e.prompt_ids for e in episodes], [e.token_ids for e in episodes], [0], [True],
                            tok.pad_token_id, rows=episode_rows(episodes, [{"prompt": "x", "answer": "?"}]),
                            completion_masks=[e.model_mask for e in episodes])
        score_batch(reward, batch, [e.model_token_ids for e in episodes], tok)
        adv, _ = gae(batch.token_rewards, torch.zeros_like(batch.token_rewards), batch.loss_mask, 1.0, 1.0)
        p, mask = len(episodes[0].prompt_ids), episodes[0].model_mask
        row = adv[0, p:p + len(mask)].tolist()
        first = [a for a, m in zip(row, mask) if m][:3]
        second = [a for a, m in zip(row, mask) if m][3:]
        env = [a for a, m in zip(row, mask) if not m]
        assert first == pytest.approx([adv1] * 3), credit
        assert second == pytest.approx([adv2] * 3), credit
        assert env == [0.0] * len(env)
        assert batch.reward_components["turn"][0].item() == pytest.approx(sum(
            {"sum": [0.5, 1.0], "min_form": [-0.5, 1.0], "delta": [-0.5, 0.0]}[credit]))


def test_an_environment_that_breaks_ends_its_episode_but_a_wrong_type_is_an_error(tok):
    policy = ScriptedPolicy(tok, ["hi<eos>"])
    (ep,) = _runner(policy, tok, env="helpers.agent_kit:FailingEnv").run([{"prompt": "x"}], Sampling(n=1))
    assert ep.done and "environment broke" in ep.env_error
    with pytest.raises(EnvTypeError, match=r"WrongTypeEnv.step must return rlkit.agents.Step, got str 'done'"):
        _runner(policy, tok, env="helpers.agent_kit:WrongTypeEnv").run([{"prompt": "x"}], Sampling(n=1))
    with pytest.raises(EnvTypeError, match="BadResetEnv.reset must return a list of"):
        _runner(policy, tok, env="helpers.agent_kit:BadResetEnv").run([{"prompt": "x"}], Sampling(n=1))


def test_limits_truncate_episodes(tok):
    """max_turns and max_episode_tokens end episodes as truncated."""
    policy = ScriptedPolicy(tok, [CALL_ADD])
    (ep,) = _runner(policy, tok, max_turns=2).run([{"prompt": "x"}], Sampling(n=1, max_new_tokens=80))
    assert len(ep.turns) == 2 and ep.truncated
    (ep,) = _runner(policy, tok, max_episode_tokens=70).run([{"prompt": "x"}], Sampling(n=1, max_new_tokens=80))
    assert len(ep.turns) == 1 and ep.truncated and len(ep.token_ids) <= 70


def test_bad_agent_config_is_refused_at_load():
    def load(*overrides):
        return load_config("configs/grpo_arith.yaml", list(overrides))

    with pytest.raises(ConfigError, match=r"agent.max_turns: must be >= 1, got 0"):
        load("agent.env=calculator", "agent.max_turns=0")
    with pytest.raises(ConfigError, match=r"agent.env: tool helpers.agent_kit.no_docstring has no schema-able"):
        load("agent.env=helpers.agent_kit:UndescribedToolEnv")
    with pytest.raises(ConfigError, match=r"agent.env_kwargs: .* takes no argument 'turn'"):
        load("agent.env=helpers.agent_kit:TalkEnv", "agent.env_kwargs={turn: 2}")
    with pytest.raises(ConfigError, match=r"agent.max_turns: has no effect without agent.env"):
        load("agent.max_turns=3")
    with pytest.raises(ConfigError, match=r"agent.env: cannot load environment 'nowhere:Env'"):
        load("agent.env=nowhere:Env")
    with pytest.raises(ToolError, match="module-level function"):
        from rlkit.agents import make_tool

        make_tool(lambda x: x)


def test_environment_arguments_and_a_reward_named_turn_are_checked_at_load():
    with pytest.raises(ConfigError, match=r"agent.env_kwargs: calculator\(examples=7\) failed: ValueError: examples "
                                          r"must be between 0 and 2"):
        load_config("configs/agent_calc.yaml", ["agent.env_kwargs={examples: 7}"])
    with pytest.raises(ConfigError, match=r"rewards.functions: the name 'turn' is the component"):
        load_config("configs/agent_calc.yaml", ["rewards.functions=[{fn: 'rewards.math:correctness', name: turn}]"])


def test_held_out_records_of_episodes_count_a_failed_environment_as_wrong(tok):
    """Held-out evaluation runs episodes: a reward of 1 on an episode whose environment failed
    is no correct answer; the records carry the episode's counts."""
    from rlkit.eval.heldout import heldout_records
    from rlkit.scoring import build_reward

    agent = AgentConfig(env="helpers.agent_kit:FailingEnv")
    reward = build_reward(RewardsConfig(functions=(RewardSpec(fn="helpers.agent_kit:row_score", name="ok"),)), agent)
    rows = [{"prompt": "x", "score": 1.0}]
    for env, correct in (("helpers.agent_kit:FailingEnv", 0.0), ("plain", 1.0)):
        runner = build_runner(AgentConfig(env=env), ScriptedPolicy(tok, ["hi<eos>"]), tok)
        (record,) = heldout_records(None, tok, rows, reward, None, 8, "ok", runner=runner)
        assert record["correct"] == correct and record["score"] == 1.0, env
        assert (record["turns"], record["tool_calls"], record["truncated"], record["completion"]) == (1, 0, False, "hi")


def test_a_reward_that_cuts_steps_at_token_offsets_is_refused_with_agents():
    with pytest.raises(ConfigError, match=r"rewards.functions\[1\].fn: rewards.prm:ProcessReward cuts the completion"):
        load_config("configs/agent_calc.yaml", ["rewards.functions=[{fn: 'rewards.math:correctness'}, "
                                                "{fn: 'rewards.prm:ProcessReward', name: prm}]"])
