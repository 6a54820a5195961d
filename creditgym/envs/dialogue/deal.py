"""Deal or No Deal (Lewis et al. 2017): item pools, private values, and move parsing (pure functions).

A pool has three item types with 1 to 4 of each and 5 to 7 items in all. Each player values every item
type with a non-negative integer so that the whole pool is worth exactly 10 to it; every item type is
worth something to at least one player, and at least one type is worth something to both (so the
players compete).

The player whose turn it is sends one of:

- `<propose>{"books": 1, "hats": 2, "balls": 0}</propose>`: the items the proposer keeps (every item type,
  whole numbers between 0 and the count); the partner would get the rest;
- `<accept>`: accept the partner's standing proposal, which closes the deal;
- `<nodeal>`: walk away; the game ends and both players get 0;
- a chat message: any other text with a word of two or more letters and no tags, at most
  `MAX_CHAT_CHARS` characters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import product

import numpy as np

ITEMS: tuple[str, ...] = ("books", "hats", "balls")
SINGULAR = {"books": "book", "hats": "hat", "balls": "ball"}
POOL_VALUE = 10
MAX_CHAT_CHARS = 500

_PROPOSE = re.compile(r"<propose>(.*?)</propose>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"</?\s*(?:propose|accept|nodeal)\b", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]{2,}")


@dataclass(frozen=True)
class Chat:
    text: str


@dataclass(frozen=True)
class Offer:
    keep: tuple[int, ...]


@dataclass(frozen=True)
class Accept:
    pass


@dataclass(frozen=True)
class NoDeal:
    pass


@dataclass(frozen=True)
class Invalid:
    reason: str


Move = Chat | Offer | Accept | NoDeal | Invalid


def generate_game(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[tuple[int, ...], tuple[int, ...]]]:
    """Draw (counts, (values of player 0, values of player 1)) with `rng`."""
    while True:
        counts = tuple(int(c) for c in rng.integers(1, 5, size=len(ITEMS)))
        if 5 <= sum(counts) <= 7:
            break
    options = [v for v in product(range(POOL_VALUE + 1), repeat=len(ITEMS)) if worth(counts, v) == POOL_VALUE]
    while True:
        first = options[int(rng.integers(len(options)))]
        second = options[int(rng.integers(len(options)))]
        if all(a or b for a, b in zip(first, second, strict=True)) and any(
            a and b for a, b in zip(first, second, strict=True)
        ):
            return counts, (first, second)


def worth(items: tuple[int, ...], values: tuple[int, ...]) -> int:
    """The value of a bundle of items to a player."""
    return sum(i * v for i, v in zip(items, values, strict=True))


def parse_action(text: object, counts: tuple[int, ...]) -> Move:
    """Read one negotiation move; `Invalid(reason)` for anything malformed."""
    if not isinstance(text, str):
        return Invalid(f"a move must be a string, got {ascii(type(text).__name__)}")
    if len(text) > MAX_CHAT_CHARS:
        return Invalid(f"the message has {len(text)} characters; the limit is {MAX_CHAT_CHARS}")
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in ("<accept>", "<accept/>"):
        return Accept()
    if lowered in ("<nodeal>", "<nodeal/>"):
        return NoDeal()
    if _TAG.search(stripped) is None:
        if _WORD.search(stripped) is None:
            return Invalid("a chat message needs at least one word")
        return Chat(stripped)
    if lowered.count("<propose>") != 1 or lowered.count("</propose>") != 1 or len(_TAG.findall(stripped)) != 2:
        return Invalid("send exactly one of <propose>{...}</propose>, <accept> or <nodeal>, alone")
    match = _PROPOSE.search(stripped)
    if match is None:
        return Invalid("</propose> comes before <propose>")
    try:
        keep = json.loads(match.group(1), object_pairs_hook=_unique_keys)
    except _DuplicateKey as error:
        return Invalid(f"the proposal names {error.args[0]} twice")
    except (ValueError, RecursionError):
        return Invalid("the proposal is not valid JSON")
    if not isinstance(keep, dict) or set(keep) != set(ITEMS):
        return Invalid(f"the proposal must give a number for each of {', '.join(ITEMS)}, and nothing else")
    amounts = []
    for item, count in zip(ITEMS, counts, strict=True):
        amount = keep[item]
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= count:
            return Invalid(f"{item} must be a whole number from 0 to {count}")
        amounts.append(amount)
    return Offer(tuple(amounts))


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise _DuplicateKey(key if key in ITEMS else "an item")
    return dict(pairs)


def describe_items(items: tuple[int, ...]) -> str:
    """"2 books, 1 hat, 0 balls"."""
    return ", ".join(
        f"{n} {name if n != 1 else SINGULAR[name]}" for n, name in zip(items, ITEMS, strict=True)
    )


def describe_values(values: tuple[int, ...]) -> str:
    return ", ".join(f"{SINGULAR[name]} {v}" for name, v in zip(ITEMS, values, strict=True))
