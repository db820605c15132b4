"""Rollouts with transformers' ``generate`` on the trainer's own model (no weight sync needed)."""
from __future__ import annotations

from typing import Iterable

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

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
        greedy = sampling.temperature <= 0
        kwargs = dict(do_sample=False) if greedy else dict(
            do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
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
        # processed (logits / temperature, top-p tokens kept, the rest -inf), like vLLM's
        # processed_logprobs; greedy scores are the raw logits.
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
