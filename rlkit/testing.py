"""Tiny random models for tests: no downloads, a few hundred thousand parameters.

``make_tiny_model(path)`` writes a Llama-architecture ``LlamaForCausalLM`` with random
float32 weights (safetensors), a character-level tokenizer and a generation config into
``path``.  The folder loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and with vLLM
(CPU build): head_dim is 32 (vLLM's CPU attention supports 32/64/80/96/112/128/...).

The tokenizer maps every printable ASCII character, newline and tab to one token, plus the
special tokens ``<pad>`` (0), ``<s>`` (1), ``</s>`` (2) and ``<unk>`` (3).  Decoding is exact
concatenation, so ``decode(encode(text)) == text`` for any ASCII text.  No token is added
automatically on encode; the chat template writes ``<s>`` and ``</s>`` itself:

    <s>user: What is 2 + 3?</s>
    <s>assistant: 5</s>
"""
from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
CHARS = "\n\t" + "".join(chr(c) for c in range(32, 127))   # space .. '~'

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ bos_token + message['role'] + ': ' + message['content'] + eos_token + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ bos_token + 'assistant: ' }}{%- endif -%}"
)

def char_vocab() -> dict[str, int]:
    """Token -> id: the special tokens first, then one id per character of ``CHARS``."""
    tokens = list(SPECIAL_TOKENS) + list(CHARS)
    return {token: i for i, token in enumerate(tokens)}


def make_char_tokenizer():
    """A ``PreTrainedTokenizerFast`` over single characters with a chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    # A BPE model without merges splits text into single characters; no pre-tokenizer is
    # needed and none is wanted (whitespace is an ordinary character here).
    backend = Tokenizer(models.BPE(vocab=char_vocab(), merges=[], unk_token="<unk>"))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in SPECIAL_TOKENS])
    backend.decoder = decoders.Fuse()  # concatenate tokens: no spaces between characters
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=512, padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama_config(vocab_size: int, *, hidden_size: int, layers: int, heads: int,
                      kv_heads: int, intermediate_size: int):
    """The ``LlamaConfig`` of the tiny model (ids of the special tokens included)."""
    from transformers import LlamaConfig

    if hidden_size % heads or hidden_size // heads not in (32, 64):
        raise ValueError(f"hidden_size {hidden_size} / heads {heads} must give head_dim 32 "
                         f"or 64 (head sizes vLLM's CPU attention supports)")
    if heads % kv_heads:
        raise ValueError(f"heads {heads} must be a multiple of kv_heads {kv_heads}")
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=hidden_size // heads, max_position_embeddings=512, rms_norm_eps=1e-5,
        initializer_range=0.02, tie_word_embeddings=False, bos_token_id=BOS_ID,
        eos_token_id=EOS_ID, pad_token_id=PAD_ID, dtype="float32", use_cache=True,
    )


def make_tiny_model(path: str | Path, *, seed: int = 0, hidden_size: int = 64,
                    layers: int = 2, heads: int | None = None, kv_heads: int | None = None,
                    intermediate_size: int = 256) -> str:
    """Write a random tiny ``LlamaForCausalLM`` + char tokenizer to ``path``; return it.

    ``heads`` defaults to ``hidden_size // 32`` (head_dim 32) and ``kv_heads`` to
    ``heads``.  The same ``seed`` always gives the same weights.  With the defaults the
    model has about 0.13 M parameters.
    """
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    heads = heads or max(1, hidden_size // 32)
    tokenizer = make_char_tokenizer()
    config = tiny_llama_config(len(tokenizer), hidden_size=hidden_size, layers=layers,
                               heads=heads, kv_heads=kv_heads or heads,
                               intermediate_size=intermediate_size)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return str(out)
