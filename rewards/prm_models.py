"""Model-based step scorers for ``rewards.prm.ProcessReward`` (torch and transformers are
imported here, not when ``rewards`` is imported).

Both re-tokenize ``prompt + steps`` with the PRM's own tokenizer (it need not share the
policy's vocabulary) and read one position per step, found with the fast tokenizer's offset
mapping.  Rows are scored in batches of ``batch_size`` under ``torch.no_grad``; sequences
longer than ``max_length`` keep their end (the steps), losing the start of the prompt.
"""
from __future__ import annotations

import torch


def prm_layout(prompt: str, steps: list[str], tag: str = "") -> tuple[str, list[int]]:
    """The PRM's input text (prompt, newline, each step followed by ``tag``) and, per step, the
    index of the character the PRM is read at (the step's, or its tag's, last character).
    ``rlkit train-prm`` builds its training inputs with the same layout."""
    text, marks = prompt + ("\n" if prompt else ""), []
    for step in steps:
        text += step + tag
        marks.append(len(text) - 1)
    return text, marks


def char_positions(offsets: list[tuple[int, int]], marks: list[int], length: int) -> list[int]:
    """The token index covering each character index in ``marks`` (the last token if none)."""
    positions = []
    for mark in marks:
        hits = [i for i, (a, b) in enumerate(offsets) if a <= mark < b]
        positions.append(hits[-1] if hits else length - 1)
    return positions


def encode_marked(tokenizer, text: str, marks: list[int], max_length: int) -> tuple[list[int], list[int | None]]:
    """Token ids of ``text`` (its last ``max_length``) and, per mark, the index of the token that
    holds that character (None where the cut removed it)."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids = enc["input_ids"]
    positions = char_positions(enc["offset_mapping"], marks, len(ids))
    cut = max(0, len(ids) - max_length)
    return ids[cut:], [p - cut if p >= cut else None for p in positions]


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    """``[len(rows), longest]`` long tensor, rows left-aligned, the rest ``value``."""
    out = torch.full((len(rows), max((len(r) for r in rows), default=1)), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


class _StepScorer:
    def __init__(self, path: str, batch_size: int, device: str, max_length: int, autocast_bf16: bool = False):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if not self.tokenizer.is_fast:
            raise ValueError(f"PRM tokenizer at {path} is not a fast tokenizer (offsets are needed)")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size, self.device, self.max_length = batch_size, torch.device(device), max_length
        self.autocast_bf16 = autocast_bf16

    def _encode(self, texts: list[str], marks: list[list[int]]):
        rows, positions = [], []
        for text, row_marks in zip(texts, marks):
            ids, row_positions = encode_marked(self.tokenizer, text, row_marks, self.max_length)
            rows.append(ids)  # a step cut off with the start of the text is read at the last token
            positions.append([len(ids) - 1 if p is None else p for p in row_positions])
        ids = pad_rows(rows, self.tokenizer.pad_token_id)
        mask = pad_rows([[1] * len(r) for r in rows], 0)
        return ids.to(self.device), mask.to(self.device), positions

    @torch.no_grad()
    def score(self, prompts: list[str], steps: list[list[str]]) -> list[list[float]]:
        out: list[list[float]] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(zip(prompts[start:start + self.batch_size], steps[start:start + self.batch_size]))
            layouts = [prm_layout(p, s, self.tag) for p, s in chunk]
            ids, mask, positions = self._encode([t for t, _ in layouts], [m for _, m in layouts])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
                scores = self._scores(ids, mask)  # [b, T], float32 (the scorers upcast the logits)
            out.extend([[float(scores[i, p]) for p in row] for i, row in enumerate(positions)])
        return out


class TokenClassificationStepScorer(_StepScorer):
    """Two labels (0 = bad, 1 = good); a step scores p(good) - p(bad) at its last token."""

    def __init__(self, path: str, batch_size: int = 16, device: str = "cpu", max_length: int = 2048,
                 tag: str = "", autocast_bf16: bool = False):
        from transformers import AutoModelForTokenClassification

        super().__init__(path, batch_size, device, max_length, autocast_bf16)
        self.model = AutoModelForTokenClassification.from_pretrained(path).to(self.device).eval()
        if self.model.config.num_labels != 2:
            raise ValueError(f"PRM at {path} has {self.model.config.num_labels} labels; a step PRM needs 2 (bad, good)")
        self.tag = tag

    def _scores(self, ids, mask):
        probs = self.model(input_ids=ids, attention_mask=mask).logits.float().softmax(-1)
        return probs[..., 1] - probs[..., 0]


class CausalLMStepScorer(_StepScorer):
    """Math-Shepherd style: ``step_tag`` after each step; the LM's next-token distribution at
    the tag's last token gives p(good) / (p(good) + p(bad))."""

    def __init__(self, path: str, batch_size: int = 16, device: str = "cpu", max_length: int = 2048,
                 good_token: str = "+", bad_token: str = "-", step_tag: str = "\n\n", autocast_bf16: bool = False):
        from transformers import AutoModelForCausalLM

        super().__init__(path, batch_size, device, max_length, autocast_bf16)
        self.model = AutoModelForCausalLM.from_pretrained(path).to(self.device).eval()
        ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in (good_token, bad_token)]
        if any(len(i) != 1 for i in ids) or ids[0] == ids[1]:
            raise ValueError(f"good_token {good_token!r} and bad_token {bad_token!r} must be two different "
                             f"single tokens of the PRM's tokenizer (got ids {ids})")
        self.good, self.bad = ids[0][0], ids[1][0]
        if not step_tag:
            raise ValueError("causal_lm PRM needs a non-empty step_tag")
        self.tag = step_tag

    def _scores(self, ids, mask):
        logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
        pair = torch.stack([logits[..., self.good], logits[..., self.bad]], dim=-1).softmax(-1)
        return pair[..., 0]
