"""How a model's chat template writes tool calls and tool results, for the multi-turn loop.

Two call syntaxes are read:

- `hermes`: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, as Qwen2.5 (and Qwen3,
  Hermes) templates write them; tool results go back as `role: tool` messages;
- `llama3`: a JSON object `{"name": ..., "parameters": {...}}` as the whole turn, optionally after
  `<|python_tag|>`, as Llama-3.1/3.2 templates write them.

A ChatML template that renders no tools (SmolLM2's own) is replaced by `TOOL_CHATML_TEMPLATE`, a
ChatML template in the hermes syntax (Qwen2.5's wording): earlier turns render the same when
messages are appended, which the loop needs. Which template is used is printed once.

Nothing is tokenized twice: the loop keeps the ids vLLM sampled, and appends the ids of the tool
results as this module renders them (`suffix_ids`): the chat template's text for the tool
messages, cut from a rendering with and without them (TRL's method).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

TOOL_CHATML_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful AI assistant.' }}{%- endif %}"
    '{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}'
    '{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}'
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}'
    "{%- elif messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first and tools %}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{{- '<|im_start|>assistant' }}{%- if message['content'] %}{{- '\\n' + message['content'] }}{%- endif %}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set f = call['function'] if call.get('function') else call %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + f['name'] + '\", \"arguments\": ' }}"
    "{%- if f['arguments'] is string %}{{- f['arguments'] }}{%- else %}{{- f['arguments'] | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

HERMES_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


class ChatFormatError(ValueError):
    """The tokenizer's chat template cannot carry tool calls; the message says what to do."""


@dataclass
class ToolCall:
    """One parsed call; `error` is set (and `name` may be "") when it cannot be made."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # "" | "malformed"
    detail: str = ""


@dataclass
class ParsedTurn:
    content: str  # the turn's text without its calls
    calls: list[ToolCall]

    def as_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        good = [c for c in self.calls if not c.error]
        if good:
            message["tool_calls"] = [
                {"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in good
            ]
        return message


def _call_from_json(text: str, arguments_key: str) -> ToolCall:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        return ToolCall("", error="malformed", detail=f"the call is not valid JSON ({err.msg} at char {err.pos})")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolCall("", error="malformed", detail='the call must be a JSON object with a string "name"')
    args = obj.get(arguments_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return ToolCall(obj["name"], error="malformed", detail="the arguments are a string that is not JSON")
    if not isinstance(args, dict):
        return ToolCall(obj["name"], error="malformed", detail="the arguments must be a JSON object")
    return ToolCall(obj["name"], args)


def parse_hermes(text: str) -> ParsedTurn:
    calls = [_call_from_json(m.group(1).strip(), "arguments") for m in HERMES_CALL.finditer(text)]
    unclosed = text.count("<tool_call>") > text.count("</tool_call>")
    if unclosed and calls and not calls[-1].error:
        calls[-1] = ToolCall(calls[-1].name, error="malformed", detail="<tool_call> is not closed by </tool_call>")
    content = HERMES_CALL.sub("", text).strip()
    return ParsedTurn(content, calls)


def parse_llama3(text: str) -> ParsedTurn:
    body = text.replace("<|python_tag|>", "").strip()
    if not body.startswith("{"):
        return ParsedTurn(text.strip(), [])
    return ParsedTurn("", [_call_from_json(body, "parameters")])


PARSERS: dict[str, Callable[[str], ParsedTurn]] = {"hermes": parse_hermes, "llama3": parse_llama3}
CALL_ENDS = {"hermes": "</tool_call>", "llama3": None}


@dataclass
class ChatFormat:
    """A tokenizer's tool-call syntax, the template to render with, and token-level helpers."""

    tokenizer: Any
    syntax: str  # "hermes" | "llama3"
    template: str  # what every rendering uses
    note: str  # which template is used, for the console

    @classmethod
    def of(cls, tokenizer: Any, chat_template: str | None = None) -> ChatFormat:
        """The format of `chat_template` (default: the tokenizer's own)."""
        own = chat_template or getattr(tokenizer, "chat_template", None)
        own = own if isinstance(own, str) else None
        if not own:
            raise ChatFormatError(
                "tools need a chat template and the tokenizer has none: give processing_class a tokenizer "
                "with a tool-calling chat template"
            )
        if "<tool_call>" in own:
            return cls(tokenizer, "hermes", own, "the tokenizer's chat template (hermes <tool_call> syntax)")
        if "<|python_tag|>" in own or "ipython" in own:
            return cls(tokenizer, "llama3", own, "the tokenizer's chat template (Llama-3 JSON tool calls)")
        if "<|im_start|>" in own and "tools" not in own:
            return cls(
                tokenizer,
                "hermes",
                TOOL_CHATML_TEMPLATE,
                "rlactors' tool-calling ChatML template (hermes <tool_call> syntax): the tokenizer's own "
                "renders no tools",
            )
        raise ChatFormatError(
            "the tokenizer's chat template is neither hermes (<tool_call>), Llama-3 (<|python_tag|>) nor a "
            "ChatML template rlactors can extend: set tokenizer.chat_template to a tool-calling template of one "
            "of those kinds, or generate with rollout_func"
        )

    @property
    def call_end(self) -> str | None:
        """A string that ends a call: generation stops there and the tools run at once."""
        return CALL_ENDS[self.syntax]

    def parse(self, text: str) -> ParsedTurn:
        return PARSERS[self.syntax](text)

    def render(
        self, messages: list[dict[str, Any]], tools: Sequence[Callable] | None, generation: bool, cont: bool = False
    ) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages,
            tools=list(tools) or None if tools else None,
            chat_template=self.template,
            add_generation_prompt=generation,
            continue_final_message=cont,
            tokenize=True,
        )
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def prompt_ids(self, messages: list[dict[str, Any]], tools: Sequence[Callable]) -> list[int]:
        """The prompt's ids; a prompt ending in an assistant message is continued (a prefill), as
        transformers' `continue_final_message` does."""
        if messages and messages[-1]["role"] == "assistant":
            return self.render(messages, tools, generation=False, cont=True)
        return self.render(messages, tools, generation=True)

    def suffix_ids(self, tool_messages: list[dict[str, Any]]) -> list[int]:
        """The ids that follow an assistant turn ending in EOS: `tool_messages` and the next
        assistant header, as the template renders them."""
        call = {"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}
        dummy = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
        prefix = self.render(dummy, None, generation=False)
        full = self.render(dummy + tool_messages, None, generation=True)
        eos = self.tokenizer.eos_token_id
        ends = [i for i, t in enumerate(prefix) if t == eos]
        if ends:
            prefix = prefix[: ends[-1] + 1]
        if full[: len(prefix)] != prefix:
            raise ChatFormatError("the chat template renders earlier turns differently once tool results follow them")
        return full[len(prefix) :]
