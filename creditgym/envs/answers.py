"""The answer in an LLM's reply, for the text views whose moves are a word or two (Sokoban, MiniGrid).

Both conventions of the peers are read: RAGEN's <answer>Left</answer> and GEM's \\boxed{left}, including the
\\boxed{\\text{Left}} that math-tuned models write. The patterns are linear in the reply's length: no two parts of
one can match the same character, so a reply that opens a tag and then degenerates into thousands of newlines (as
sampled LLMs do) is scanned once. `\\s*` around a lazy span made that quadratic: 30 s for 8,000 newlines.
"""

from __future__ import annotations

import re

_ANSWER = re.compile(r"<answer>([^<]{0,400})</answer>", re.IGNORECASE)
# One level of nested braces, for \boxed{\text{Left}}
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]{0,100}\}){0,400})\}")


def last_answer(text: str) -> str | None:
    """The inside of the last <answer>...</answer>, or else of the last \\boxed{...}, stripped; None when the
    reply has neither (an empty <answer></answer> falls through to \\boxed{})."""
    return _last(_ANSWER, text) or _last(_BOXED, text)


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    last = None
    for match in pattern.finditer(text):
        last = match.group(1)
    return None if last is None else last.strip()
