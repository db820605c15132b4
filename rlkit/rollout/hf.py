"""Rollouts with transformers' ``generate`` on the trainer's own model (no weight sync needed).

The sampling options go through rlkit's own logits-processor list, in vLLM's order (penalty,
temperature, min-p, top-k, top-p: rlkit/rollout/__init__.py), not through ``generate``'s
keywords: transformers applies min-p after top-p (a different distribution whenever both are
set), its repetition penalty counts the left padding of a batch as prompt tokens, and it fills
any option left unset from the model's ``generation_config.json``, which vLLM never reads.
Every built-in processor is therefore switched off (``_NEUTRAL``, ``_NEUTRAL_WARPERS``), and
``output_scores`` are the logits after rlkit's processors: their log-softmax is the log-prob
under the distribution each token was drawn from.
"""
from __future__ import annotations

from typing import Iterable

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from rlkit.rollout import Generation, RolloutSetup, Sampling


class _StopStrings(StoppingCriteria):
    """Stops a row once a stop string appears in the text of its new tokens, decoded with special
    tokens skipped, as vLLM matches them (and as ``_stop_end`` cuts afterwards).  transformers'
    own ``stop_strings`` match the raw token strings over prompt and completion together: a stop
    string running into the prompt, or into a special token's text (``"!<s"`` over ``!`` ``<s>``),
    ended rows that ``_stop_end`` then did not cut, leaving pad tokens in the completion.
    Only the last ``window`` new tokens are decoded each step (enough for the longest stop
    string at 4 tokens a character); ``_stop_end`` checks the whole completion."""

    def __init__(self, tokenizer, stops, prompt_width: int):
        self.tokenizer, self.stops, self.start = tokenizer, tuple(stops), prompt_width
        self.window = 4 * max(len(s) for s in self.stops) + 16

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        new = input_ids[:, self.start:]
        texts = self.tokenizer.batch_decode(new[:, -self.window:].tolist(), skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], dtype=torch.bool,
                            device=input_ids.device)


class _RepetitionPenalty(LogitsProcessor):
    """vLLM's repetition penalty: the logit of every token id present in the row's prompt or in
    its completion so far is divided by ``penalty`` when positive and multiplied by it otherwise.
    ``starts[r]`` is where row ``r``'s prompt begins after the left padding, which is not part
    of the prompt (transformers' own processor would penalise the pad token)."""

    def __init__(self, penalty: float, starts: torch.Tensor):
        self.penalty, self.starts = penalty, starts

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        real = (positions[None, :] >= self.starts.to(input_ids.device)[:, None]).to(scores.dtype)
        seen = torch.zeros_like(scores).scatter_add_(1, input_ids, real) > 0
        scale = torch.where(scores > 0, 1.0 / self.penalty, self.penalty)
        return torch.where(seen, scores * scale, scores)


# generate's own processors, all off; without these a model's generation_config.json (top_k: 20,
# repetition_penalty: 1.05, ...) would act on hf rollouts only.  The warpers act only when sampling
# (naming them for greedy decoding makes transformers warn).
_NEUTRAL = dict(repetition_penalty=1.0, no_repeat_ngram_size=0)
_NEUTRAL_WARPERS = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=None, typical_p=1.0, epsilon_cutoff=0.0,
                        eta_cutoff=0.0)


def logits_processors(sampling: Sampling, starts: torch.Tensor) -> LogitsProcessorList:
    """The processors for ``sampling`` in vLLM's order (only the penalty for greedy decoding)."""
    out = LogitsProcessorList()
    if sampling.repetition_penalty != 1.0:
        out.append(_RepetitionPenalty(float(sampling.repetition_penalty), starts))
    if sampling.temperature <= 0:
        return out
    if sampling.temperature != 1.0:
        out.append(TemperatureLogitsWarper(float(sampling.temperature)))
    if sampling.min_p > 0:
        out.append(MinPLogitsWarper(float(sampling.min_p)))
    if sampling.top_k > 0:
        out.append(TopKLogitsWarper(int(sampling.top_k)))
    if sampling.top_p < 1.0:
        out.append(TopPLogitsWarper(float(sampling.top_p)))
    return out


class HFRollout:
    """Generates with the live policy module; ``update_weights`` is a no-op because it shares it."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> list[Generation]:
        expanded = [(i, p) for i, p in enumerate(prompt_ids) for _ in range(sampling.n)]
        out: list[Generation] = []
        for start in range(0, len(expanded), self.batch_size):
            out.extend(self._generate_chunk(expanded[start:start + self.batch_size], sampling))
        return out

    def _generate_chunk(self, rows: list[tuple[int, list[int]]], sampling: Sampling) -> list[Generation]:
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for _, p in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (_, p) in enumerate(rows):  # left-pad for generation
            ids[r, width - len(p):] = torch.tensor(p)
            attn[r, width - len(p):] = 1
        starts = torch.tensor([width - len(p) for _, p in rows])
        sample = sampling.temperature > 0
        kwargs = dict(_NEUTRAL, **(_NEUTRAL_WARPERS if sample else {}), do_sample=sample,
                      logits_processor=logits_processors(sampling, starts))
        if sampling.stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList([_StopStrings(self.tokenizer, sampling.stop, width)])
        was_training = self.model.training
        self.model.eval()
        result = self.model.generate(
            input_ids=ids.to(device), attention_mask=attn.to(device), max_new_tokens=sampling.max_new_tokens,
            pad_token_id=pad, eos_token_id=self._eos_ids(), output_scores=True, return_dict_in_generate=True,
            **kwargs,
        )
        self.model.train(was_training)
        new_tokens = result.sequences[:, width:].cpu()
        # Log-probs of the sampled tokens under the sampling distribution: generate's scores are
        # the logits after the processors (removed tokens -inf), like vLLM's processed_logprobs.
        scores = torch.stack(result.scores, dim=1).float().log_softmax(-1).cpu()  # [N, L, V]
        token_lp = scores.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        eos = set(self._eos_ids())
        gens = []
        for r, (prompt_index, _) in enumerate(rows):
            toks = new_tokens[r].tolist()
            end = next((j + 1 for j, t in enumerate(toks) if t in eos), None)
            stop, stop_end = self._stop_end(toks[:end] if end else toks, sampling.stop)
            if stop is not None:
                end = stop_end
            if end is not None:
                toks = toks[:end]
            gens.append(Generation(
                prompt_index=prompt_index, token_ids=toks, logprobs=token_lp[r, : len(toks)].tolist(),
                text=self.tokenizer.decode(toks, skip_special_tokens=True), finished=end is not None,
                stop_reason=stop))
        return gens

    def _stop_end(self, toks: list[int], stops: tuple[str, ...]) -> tuple[str | None, int]:
        """The first stop string in the decoded tokens and the length of the shortest prefix that
        contains it (containment only grows with the prefix: binary search), or (None, 0)."""
        decode = lambda n: self.tokenizer.decode(toks[:n], skip_special_tokens=True)  # noqa: E731
        found = [(s, decode(len(toks)).find(s)) for s in stops]
        found = [(s, i) for s, i in found if i >= 0]
        if not found:
            return None, 0
        stop = min(found, key=lambda f: f[1] + len(f[0]))[0]
        lo, hi = 1, len(toks)
        while lo < hi:
            mid = (lo + hi) // 2
            if stop in decode(mid):
                hi = mid
            else:
                lo = mid + 1
        return stop, lo

    def _eos_ids(self) -> list[int]:
        eos = getattr(self.model.generation_config, "eos_token_id", None) or self.tokenizer.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        return None

    def sleep(self) -> None:
        return None

    def wake(self) -> None:
        return None

    def close(self) -> None:
        return None


def build(setup: RolloutSetup) -> HFRollout:
    """The ``hf`` entry of ``rlkit.rollout.ROLLOUT_BACKENDS``."""
    return HFRollout(setup.model, setup.tokenizer)
