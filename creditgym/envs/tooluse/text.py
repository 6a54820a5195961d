"""ToolUse's text actions (a pure parser), the instructions and tool-result rendering."""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from typing import Any

from creditgym.envs.tooluse.reward import ToolUseRewards
from creditgym.envs.tooluse.tools import TOOL_SCHEMAS, Call

#: Longer actions are rejected unread.
MAX_ACTION_LENGTH = 8000
MAX_CALLS_PER_TURN = 8
MAX_ANSWER_LENGTH = 500
# Tags are found once and paired in one pass (`_blocks`): a lazy "<answer>(.*?)</answer>" rescans to the end from
# every opening tag that has no closing one: quadratic, 0.15 s for the 1,000 "<answer>" that fit the length cap.
_TAGS = {name: re.compile(f"<(/?){name}>", re.IGNORECASE) for name in ("tool_call", "answer")}
_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class ToolUseAction:
    calls: tuple[Call, ...] = ()
    answer: str | None = None
    """The final answer; None for a turn of tool calls."""
    well_formatted: bool = True
    """Nothing but an optional leading <think> block and the tags (ToolRL's R_format)."""


def parse_action(text: object) -> ToolUseAction | None:
    """Tool calls (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one or more) or an
    `<answer>...</answer>`, after an optional <think> block; None when the text is neither."""
    parsed = parse_or_explain(text)
    return parsed if isinstance(parsed, ToolUseAction) else None


def parse_or_explain(text: object) -> ToolUseAction | str:
    """Like `parse_action`, but says what is wrong instead of returning None."""
    if not isinstance(text, str):
        return "the action must be text"
    if len(text) > MAX_ACTION_LENGTH:
        return f"the action is longer than {MAX_ACTION_LENGTH} characters"
    body = _THINK.sub("", text, count=1)
    lowered = body.lower()
    if lowered.count("<tool_call>") != lowered.count("</tool_call>"):
        return "every <tool_call> needs a matching </tool_call>"
    calls_text, without_calls = _blocks(body, "tool_call")
    answers, _ = _blocks(body, "answer")
    if calls_text and answers:
        return "send either tool calls or an answer in one turn, not both"
    rest = _blocks(without_calls, "answer")[1].strip()
    if answers:
        answer = answers[-1].strip()
        if not answer:
            return "the answer is empty"
        if len(answer) > MAX_ANSWER_LENGTH:
            return f"the answer is longer than {MAX_ANSWER_LENGTH} characters"
        return ToolUseAction(answer=answer, well_formatted=not rest and len(answers) == 1)
    if not calls_text:
        return 'no <tool_call>{"name": ..., "arguments": {...}}</tool_call> and no <answer>...</answer> found'
    if len(calls_text) > MAX_CALLS_PER_TURN:
        return f"at most {MAX_CALLS_PER_TURN} tool calls per turn"
    calls = []
    for i, raw in enumerate(calls_text, start=1):
        call = _call(raw)
        if isinstance(call, str):
            return f"tool call {i}: {call}"
        calls.append(call)
    return ToolUseAction(calls=tuple(calls), well_formatted=not rest)


def _blocks(text: str, name: str) -> tuple[list[str], str]:
    """The contents of each <name>...</name> block and the text outside them, as the regex
    "<name>(.*?)</name>" (case-insensitive, across lines) finds and removes them, in one pass: an opening tag
    pairs with the next closing tag; other tags in between are content, and unpaired tags stay outside."""
    contents, outside, start, opened = [], [], 0, None
    for tag in _TAGS[name].finditer(text):
        closing = bool(tag.group(1))
        if opened is None and not closing:
            opened = tag
        elif opened is not None and closing:
            contents.append(text[opened.end():tag.start()])
            outside.append(text[start:opened.start()])
            start, opened = tag.end(), None
    outside.append(text[start:])
    return contents, "".join(outside)


def _call(raw: str) -> Call | str:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        if _starts_with_json(raw):  # e.g. two calls in one block, one JSON object a line
            return "text after the JSON object; write one call per <tool_call> block"
        return 'not valid JSON; write {"name": "calculator", "arguments": {"expression": "2 + 2"}}'
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return 'expected a JSON object with a "name" string and an "arguments" object'
    extra = set(data) - {"name", "arguments"}
    if extra:
        return f"unexpected keys {sorted(extra)!r:.80}; only name and arguments"
    arguments: Any = data.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI's wire format sends arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return "arguments is a string that is not valid JSON"
    if not isinstance(arguments, dict):
        return '"arguments" must be a JSON object'
    return Call(data["name"], arguments)


def _starts_with_json(raw: str) -> bool:
    """Whether the text opens with a whole JSON value (so what failed to parse is what follows it)."""
    try:
        json.JSONDecoder().raw_decode(raw.strip())
    except (ValueError, RecursionError):
        return False
    return True


def excerpt(text: object, limit: int = 40) -> str:
    """A short, printable, single-line rendering of what the agent sent."""
    raw = text if isinstance(text, str) else repr(text)
    safe = "".join(ch if ch in string.printable and ch not in "\r\n\t\x0b\x0c" else "?" for ch in raw[:limit])
    return repr(safe + ("..." if len(raw) > limit else ""))


def render_results(calls: tuple[Call, ...], results: list[dict[str, Any]]) -> str:
    """Tool results in the Qwen/Hermes style: one <tool_response> block per call, in order. Each result is
    {"content": ...} or {"error": "..."}."""
    blocks = [
        f"<tool_response>\n{json.dumps({'name': call.name, **result}, ensure_ascii=True)}\n</tool_response>"
        for call, result in zip(calls, results, strict=True)
    ]
    return "\n".join(blocks)


def instructions(rewards: ToolUseRewards) -> str:
    """Rules, tool schemas and action format, ready to use as a system prompt."""
    tools = "\n".join(json.dumps(schema) for schema in TOOL_SCHEMAS)
    return (
        "Answer the question using the tools below. Each turn, either call one or more tools or give the final "
        "answer.\n"
        "Call a tool as <tool_call>{\"name\": \"calculator\", \"arguments\": {\"expression\": \"2 + 2\"}}</tool_call> "
        "(one call per <tool_call> block; several blocks in one turn run in order). Answer as <answer>42.5</answer>: "
        "a number without units or currency, a date as YYYY-MM-DD, or a name. You may think first inside "
        "<think>...</think>.\n"
        "Each tool's result comes back in a <tool_response> block; a tool that cannot answer returns an error.\n"
        f"Rewards: {rewards.correct:+g} for a correct answer, {rewards.wrong:+g} for a wrong one. Counts (days, "
        "weeks, items in stock) must be exact; other numbers may be off by 0.5% or 0.01, whichever is larger. "
        f"{rewards.invalid_action:+g} for a turn that is not valid tool calls or an answer. Each turn of tool calls "
        "gets a ToolRL score (-3 to 4) against the reference-plan step it improves most and earns "
        f"{rewards.tool_weight:g} times the improvement on that step's best score so far (the full score the first "
        "time, 0 for a repeat). "
        "The episode ends with your answer.\n"
        f"Tools (OpenAI function schemas):\n{tools}"
    )
