"""Where each sampled token's text ends in the decoded completion (for rewards that cut text
into spans, such as process rewards' steps).

Decoding token by token is wrong for byte-level tokenizers (a character can span tokens), and
decoding every prefix costs O(L^2).  ``token_char_ends`` decodes a short window before each
token, as vLLM's incremental detokenizer does, and checks the result against the full decode,
falling back to prefix decodes when they disagree.
"""
from __future__ import annotations

_WINDOW = 6  # tokens of left context per incremental decode


def token_char_ends(tokenizer, token_ids: list[int]) -> list[int]:
    """``ends[k]`` = length of the decoded text of ``token_ids[:k+1]`` (skipping special tokens),
    so token k covers characters ``ends[k-1]:ends[k]`` of ``tokenizer.decode(token_ids)``.
    A token that completes a multi-byte character carries it; special tokens cover nothing."""
    full = tokenizer.decode(token_ids, skip_special_tokens=True)
    ends: list[int] = []
    length = 0
    pending = 0  # tokens whose bytes have not produced a whole character yet
    for k in range(len(token_ids)):
        start = max(0, k - _WINDOW - pending)
        left = tokenizer.decode(token_ids[start:k - pending], skip_special_tokens=True)
        both = tokenizer.decode(token_ids[start:k + 1], skip_special_tokens=True)
        piece = both[len(left):] if both.startswith(left) else None
        if piece is None:
            return _prefix_ends(tokenizer, token_ids)
        if piece.endswith("\ufffd") and k + 1 < len(token_ids):
            pending += 1  # an incomplete character: the next token finishes it
            ends.append(length)
            continue
        pending = 0
        length += len(piece)
        ends.append(length)
    if length != len(full):
        return _prefix_ends(tokenizer, token_ids)
    return ends


def _prefix_ends(tokenizer, token_ids: list[int]) -> list[int]:
    return [len(tokenizer.decode(token_ids[:k + 1], skip_special_tokens=True)) for k in range(len(token_ids))]
