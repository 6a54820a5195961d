"""Shop's text actions (a pure parser), the instructions and the feedback for invalid actions."""

from __future__ import annotations

import re
import string
from typing import NamedTuple

from creditgym.envs.shop.reward import ShopRewards

#: An action longer than this (after removing any <think> block and <action> tags) is not read.
MAX_ACTION_LENGTH = 400
_COMMAND = re.compile(r"(search|click)\s*\[([^\[\]\n]+)\]")
_SPACES = re.compile(r"\s+")


class ShopAction(NamedTuple):
    kind: str
    """"search" or "click"."""
    argument: str
    """The query, or the label to click: lower case, with runs of whitespace collapsed."""


def parse_action(text: object) -> ShopAction | None:
    """Read `search[query]` or `click[label]`; None when the text is neither.

    A leading <think>...</think> block is ignored, and the action may be wrapped in <action>...</action> or
    <answer>...</answer> (the last such tag wins). The whole remaining text must be the one action.
    """
    if not isinstance(text, str):
        return None
    text = action_body(text)
    if len(text) > MAX_ACTION_LENGTH:
        return None
    match = _COMMAND.fullmatch(text)
    if match is None:
        return None
    argument = normalize_label(match.group(2))
    return ShopAction(match.group(1), argument) if argument else None


def action_body(text: str) -> str:
    """The part of a reply that must be the action: lower case, after any <think> block, inside the last
    <action> or <answer> tag when there is one, stripped."""
    text = text.lower()
    text = text[text.rfind("</think>") + 8 :] if "</think>" in text else text
    for tag in ("action", "answer"):
        inner = _last_tagged(text, tag)
        if inner is not None:
            return inner.strip()
    return text.strip()


def normalize_label(text: str) -> str:
    """A label or query as clicks are matched: lower case, runs of whitespace collapsed, ends stripped."""
    return _SPACES.sub(" ", text.lower()).strip()


def _last_tagged(text: str, tag: str) -> str | None:
    # rfind keeps this linear on hostile input such as a megabyte of repeated opening tags.
    end = text.rfind(f"</{tag}>")
    start = text.rfind(f"<{tag}>", 0, max(end, 0))
    if end < 0 or start < 0:
        return None
    return text[start + len(tag) + 2 : end]


def excerpt(text: object, limit: int = 40) -> str:
    """A short, printable, single-line rendering of what the agent sent."""
    raw = text if isinstance(text, str) else repr(text)
    safe = "".join(ch if ch in string.printable and ch not in "\r\n\t\x0b\x0c" else "?" for ch in raw[:limit])
    return repr(safe + ("..." if len(raw) > limit else ""))


def instructions(rewards: ShopRewards) -> str:
    """Rules and action format, ready to use as a system prompt."""
    return (
        "You are shopping in a web store. Find a product that matches the instruction shown on every page, "
        "choose the requested options, and buy it.\n"
        "Actions (one per turn):\n"
        "- search[your query]: only on the search page. Elsewhere, click[Back to Search] first.\n"
        "- click[label]: click any label shown in square brackets on the current page, e.g. click[Next >], "
        "click[< Prev], a product id such as click[B0ABC12345], an option value such as click[chocolate], "
        "click[Description], click[Features] or click[Buy Now]. Labels are not case-sensitive.\n"
        "Results come 10 to a page. On an item page, click one value of each option you need, then Buy Now.\n"
        f"Reward: when you buy, {rewards.purchase:g} times the share of the instruction's attributes, options and "
        "price limit that the purchase meets, scaled down when it is the wrong kind of product. "
        f"An action that is not available costs {rewards.invalid_action:+g}. "
        "Buying ends the episode; so does running out of steps, with no reward.\n"
        "You may think first inside <think>...</think>; then write only the action, optionally as "
        "<action>click[Buy Now]</action>."
    )
