"""Token ids of an episode's parts through the tokenizer's chat template, never re-tokenising
what the model sampled.

- ``prompt_ids``: the first messages with the tool schemas.  A template that renders ``tools=``
  gets them; one that ignores them (SmolLM2's) gets a tool block in the system message, in the
  ``<tools>`` / ``<tool_call>`` layout of Hermes- and Qwen-style templates.
- ``observation_ids``: what follows a model turn, as the template renders it: the end of the
  assistant message (when the model did not sample it: a turn stopped at ``</tool_call>`` or
  cut at its token limit), the observation messages, and the next assistant header.  Computed as
  the text the template adds after a fixed conversation, tokenized alone: the model's tokens
  are appended as sampled and only these environment tokens are tokenized.
"""
from __future__ import annotations

import json

from rlkit.agents.tools import CALL_END, CALL_START

_BASE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
_MARK = "\x00rlkit-turn\x00"


def tool_system_text(schemas: list[dict]) -> str:
    lines = "\n".join(json.dumps(s, ensure_ascii=False) for s in schemas)
    return ("You may call one or more functions to assist with the user query. The functions are:\n"
            f"<tools>\n{lines}\n</tools>\n"
            f"To call a function, write {CALL_START} on its own line, then one JSON object per call on its own "
            f'line, {{"name": <function-name>, "arguments": <args-json-object>}}, then {CALL_END} on its own line. '
            "The results come back in the next message.")


class ChatRenderer:
    """The chat-template arithmetic of one tokenizer (computed once)."""

    def __init__(self, tokenizer, system_prompt: str | None = None):
        self.tokenizer, self.system_prompt = tokenizer, system_prompt
        render = self._render
        assistant = render(_BASE + [{"role": "assistant", "content": _MARK}])
        head, sep, tail = assistant.partition(_MARK)
        if not sep:
            raise ValueError("the chat template does not render an assistant message's content")
        self.turn_close = tail                      # after an assistant message's content
        eos = tokenizer.eos_token or ""
        self.after_eos = tail[len(eos):] if eos and tail.startswith(eos) else None
        probe = [{"role": "user", "content": "x"}]
        self.template_tools = render(probe, tools=[_PROBE_SCHEMA]) != render(probe)

    def _render(self, messages: list[dict], generation: bool = False, tools=None) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation,
                                                  **({"tools": tools} if tools else {}))

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, messages: list[dict], schemas: list[dict]) -> list[int]:
        messages = [dict(m) for m in messages]
        if self.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        if schemas and not self.template_tools:
            block = tool_system_text(schemas)
            if messages[0]["role"] == "system":
                messages[0]["content"] = messages[0]["content"].rstrip() + "\n\n" + block
            else:
                messages.insert(0, {"role": "system", "content": block})
        text = self._render(messages, generation=True, tools=schemas if self.template_tools else None)
        return self._ids(text)

    def observation_ids(self, messages: list[dict], sampled_eos: bool) -> list[int]:
        """Environment tokens after a turn: the assistant message's end (all of it, or what
        follows the EOS token when the model sampled it), ``messages``, the next header."""
        close = self.after_eos if sampled_eos and self.after_eos is not None else self.turn_close
        before = self._render(_BASE + [{"role": "assistant", "content": "A"}])
        after = self._render(_BASE + [{"role": "assistant", "content": "A"}] + list(messages), generation=True)
        if not after.startswith(before):
            raise ValueError("the chat template renders earlier messages differently once more follow; "
                             "multi-turn token ids cannot be appended safely")
        return self._ids(close + after[len(before):])


_PROBE_SCHEMA = {"type": "function", "function": {"name": "probe", "description": "probe",
                                                  "parameters": {"type": "object", "properties": {}}}}
