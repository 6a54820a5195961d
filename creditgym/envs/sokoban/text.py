"""Sokoban's text view: action parsing, instructions and feedback (pure functions)."""

from __future__ import annotations

import re
import string

from creditgym.envs.answers import last_answer
from creditgym.envs.sokoban.level import Tile
from creditgym.envs.sokoban.rules import Action, SokobanRewards

ACTION_NAMES: dict[Action, str] = {Action.UP: "Up", Action.DOWN: "Down", Action.LEFT: "Left", Action.RIGHT: "Right"}

_WORDS = {"up": Action.UP, "down": Action.DOWN, "left": Action.LEFT, "right": Action.RIGHT}
_LETTERS = {"u": Action.UP, "d": Action.DOWN, "l": Action.LEFT, "r": Action.RIGHT}
_DIRECTION = re.compile(r"\b(up|down|left|right)\b", re.IGNORECASE)
#: Free text without an <answer> or \boxed{} is read only when short, so a long ramble that happens to
#: mention one direction is not taken as a move.
MAX_FREE_TEXT = 200


def parse_action(text: object) -> Action | None:
    """Read one move from text; None when the text names no move or more than one.

    Accepts "up", "Up", "UP", "u", "<answer>Left</answer>", "\\boxed{down}", "move left", "I will go right.".
    The last <answer> or \\boxed{} wins, as LLMs often restate their answer.
    """
    if not isinstance(text, str):
        return None
    span = last_answer(text)
    if span is None:
        if len(text) > MAX_FREE_TEXT:
            return None
        span = text
    span = span.strip().strip(".!").strip()
    if span.lower() in _LETTERS:
        return _LETTERS[span.lower()]
    found = {_WORDS[word.lower()] for word in _DIRECTION.findall(span)}
    return found.pop() if len(found) == 1 else None


def describe_invalid(text: object) -> str:
    """Feedback for the next observation: what was received and what to send instead."""
    shown = _printable_excerpt(text if isinstance(text, str) else repr(text))
    return (
        f"Invalid action {shown}: nothing moved. Answer with exactly one of Up, Down, Left, Right, "
        "for example <answer>Left</answer>."
    )


def _printable_excerpt(text: str, limit: int = 40) -> str:
    safe = "".join(ch if ch in string.printable and ch not in "\r\n\t\x0b\x0c" else "?" for ch in text[:limit])
    return repr(safe + ("..." if len(text) > limit else ""))


def instructions(symbols: dict[Tile, str], rewards: SokobanRewards) -> str:
    """Rules, legend and action format, ready to use as a system prompt."""
    legend = ", ".join(
        f"{name} '{symbols[tile]}'"
        for name, tile in (
            ("wall", Tile.WALL),
            ("floor", Tile.FLOOR),
            ("target", Tile.TARGET),
            ("box", Tile.BOX),
            ("box on target", Tile.BOX_ON_TARGET),
            ("you", Tile.PLAYER),
            ("you on target", Tile.PLAYER_ON_TARGET),
        )
    )
    paid = [(rewards.step, "per step"), (rewards.box_on_target, "for each box pushed onto a target"),
            (rewards.box_off_target, "for each box pushed off one"), (rewards.solved, "when all boxes are on targets"),
            (rewards.invalid_action, "for an answer that is not a move")]
    reward_terms = ", ".join(f"{value:+g} {what}" for value, what in paid if value != 0) or "none"
    return (
        "You are solving Sokoban. Push every box onto a target. You move one cell at a time; walking into a box "
        "pushes it one cell if the cell behind it is free. You cannot pull boxes or walk through walls, and a box "
        "pushed into a corner that is not a target can never be recovered.\n"
        f"Board legend: {legend}. Row 0 is the top of the board.\n"
        f"Rewards: {reward_terms}.\n"
        "Each turn, answer with exactly one move: Up, Down, Left or Right, written as <answer>Up</answer>."
    )
