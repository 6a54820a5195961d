"""Dialogue text: parsing the agent's messages, matching slots and values in free text (pure functions).

A message is one of:

- a proposal: exactly one `<propose>{json}</propose>`, where the JSON is a non-empty object mapping slot
  names of the domain to strings or numbers (text around the tags is ignored);
- a question: any other message that contains a `?` and at least one word of two or more letters.

Everything else is invalid: a non-string, an empty or whitespace-only message, a message over
`MAX_MESSAGE_CHARS`, a statement without `?`, and a malformed proposal (unclosed or repeated tags, bad
JSON, not an object, unknown slot names, lists/objects/booleans/null as values).
"""

from __future__ import annotations

import functools
import json
import re
import string
from collections.abc import Collection
from dataclasses import dataclass

from creditgym.envs.dialogue.scenarios import DOMAINS, Domain

MAX_MESSAGE_CHARS = 1000

_PROPOSE = re.compile(r"<propose>(.*?)</propose>", re.IGNORECASE | re.DOTALL)
_WORD = re.compile(r"[A-Za-z]{2,}")
_TOKEN = re.compile(r"[a-z0-9]+")
_ARTICLES = frozenset({"a", "an", "the"})
_PRINTABLE = frozenset(string.printable)


@dataclass(frozen=True)
class Question:
    text: str


@dataclass(frozen=True)
class Proposal:
    values: dict[str, str | int | float]


@dataclass(frozen=True)
class Invalid:
    reason: str


def parse_action(text: object, slot_names: Collection[str] | None = None) -> Question | Proposal | Invalid:
    """Read one agent message. `slot_names`, when given, are the keys a proposal may use."""
    if not isinstance(text, str):
        return Invalid(f"a message must be a string, got {_excerpt(type(text).__name__)}")
    if len(text) > MAX_MESSAGE_CHARS:
        return Invalid(f"the message has {len(text)} characters; the limit is {MAX_MESSAGE_CHARS}")
    stripped = text.strip()
    if not stripped:
        return Invalid("the message is empty")
    lowered = stripped.lower()
    if "<propose" in lowered or "</propose" in lowered:
        return _parse_proposal(stripped, lowered, slot_names)
    if "?" not in stripped or _WORD.search(stripped) is None:
        return Invalid("the message is neither a question (it has no '?') nor a <propose>...</propose>")
    return Question(stripped)


def _parse_proposal(text: str, lowered: str, slot_names: Collection[str] | None) -> Proposal | Invalid:
    if lowered.count("<propose>") != 1 or lowered.count("</propose>") != 1:
        return Invalid("a proposal needs exactly one <propose> and one </propose> tag")
    match = _PROPOSE.search(text)
    if match is None:
        return Invalid("</propose> comes before <propose>")
    try:
        values = json.loads(match.group(1))
    except (ValueError, RecursionError):
        return Invalid("the proposal is not valid JSON")
    if not isinstance(values, dict) or not values:
        return Invalid('the proposal must be a non-empty JSON object such as {"budget": "$800"}')
    for key, value in values.items():
        if slot_names is not None and key not in slot_names:
            return Invalid(f"unknown slot {_excerpt(key)}; known slots: {', '.join(slot_names)}")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return Invalid(f"the value of {_excerpt(key)} must be a string or a number")
    return Proposal(values)


def normalize_value(value: object) -> str:
    """A comparable key: lower case, articles and punctuation dropped ("$1,200" == 1200, "16 GB" == "16gb")."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return "".join(t for t in _TOKEN.findall(str(value).lower()) if t not in _ARTICLES)


def sanitize(text: str, limit: int) -> str:
    """Printable ASCII only, at most `limit` characters (simulator replies must fit the observation space)."""
    clean = "".join(ch if ch in _PRINTABLE else "?" for ch in text[:limit])
    return clean.strip() or "..."


def describe_invalid(reason: str) -> str:
    """Feedback for the next observation."""
    return (
        f"Invalid message: {reason}. Nothing was sent to the user. Ask one question ending with '?', "
        'or finish with <propose>{"slot": "value", ...}</propose>.'
    )


def _excerpt(text: str, limit: int = 30) -> str:
    shown = "".join(ch if ch in _PRINTABLE and ch not in "\r\n\t\x0b\x0c" else "?" for ch in text[:limit])
    return repr(shown + ("..." if len(text) > limit else ""))


def _value_regex(value: str) -> str:
    tokens = [t for t in _TOKEN.findall(value.lower()) if t not in _ARTICLES]
    return r"(?<![a-z0-9])" + r"[\s\-]*".join(tokens) + r"(?![a-z0-9])"


class DomainIndex:
    """Compiled matchers for one domain: which slots a text asks about, and which values it names."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        pairs = sorted(
            ((slot.name, value) for slot in domain.slots for value in slot.values), key=lambda p: -len(p[1])
        )
        self._values = pairs
        self._value_re = re.compile("|".join(f"(?P<v{i}>{_value_regex(v)})" for i, (_, v) in enumerate(pairs)))
        self._slots = [slot.name for slot in domain.slots]
        self._keyword_re = re.compile(
            "|".join(
                f"(?P<k{i}>(?<![a-z0-9])(?:{'|'.join(slot.keywords)})(?![a-z0-9]))"
                for i, slot in enumerate(domain.slots)
            )
        )

    def mentions(self, text: str) -> list[tuple[str, str | None]]:
        """Slots the text asks about, in order of first mention, each with the value it suggests: None for a
        plain question ("What is your budget?") and for a choice between values ("Windows or Linux?")."""
        lowered = text.lower()
        found: list[tuple[int, str, str | None]] = []
        for match in self._value_re.finditer(lowered):
            slot, value = self._values[int(match.lastgroup[1:])]
            found.append((match.start(), slot, value))
        for match in self._keyword_re.finditer(lowered):
            found.append((match.start(), self._slots[int(match.lastgroup[1:])], None))
        found.sort(key=lambda item: item[0])
        order: dict[str, str | None] = {}
        choice: set[str] = set()
        for _, slot, value in found:
            if slot not in order or (order[slot] is None and value is not None and slot not in choice):
                order[slot] = value
            elif value is not None and value != order[slot]:
                choice.add(slot)
                order[slot] = None
        return list(order.items())

    def values_in(self, text: str) -> dict[str, list[str]]:
        """The values a text names, by slot, in order of appearance."""
        found: dict[str, list[str]] = {}
        for match in self._value_re.finditer(text.lower()):
            slot, value = self._values[int(match.lastgroup[1:])]
            found.setdefault(slot, []).append(value)
        return found


@functools.cache
def domain_index(name: str) -> DomainIndex:
    return DomainIndex(DOMAINS[name])
