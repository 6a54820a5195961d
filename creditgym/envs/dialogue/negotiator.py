"""A scripted Deal or No Deal negotiator (for tests and as a baseline).

It reads its counts, values and the partner's standing proposal from its info dict. Its threshold starts
at `start` and drops by one on each of its turns, down to `floor`. It accepts a standing proposal worth at
least the threshold; otherwise it proposes the most generous bundle still worth the threshold (the fewest
items kept, then the most value), always leaving the partner at least one item.
"""

from __future__ import annotations

import json
from itertools import product
from typing import Any

from creditgym.envs.dialogue.deal import ITEMS, worth


class ScriptedNegotiator:
    def __init__(self, *, start: int = 8, floor: int = 5) -> None:
        if not 0 <= floor <= start <= 10:
            raise ValueError("need 0 <= floor <= start <= 10")
        self.start, self.floor = start, floor
        self._threshold = start

    def reset(self) -> None:
        self._threshold = self.start

    def act(self, info: dict[str, Any]) -> str:
        """The move for this turn (call it only when `info["your_turn"]`)."""
        counts, values = tuple(info["counts"]), tuple(info["values"])
        offer = info.get("partner_offer")
        if offer is not None and worth(tuple(offer), values) >= self._threshold:
            return "<accept>"
        keep = self._bundle(counts, values)
        self._threshold = max(self.floor, self._threshold - 1)
        return "<propose>" + json.dumps(dict(zip(ITEMS, keep, strict=True))) + "</propose>"

    def _bundle(self, counts: tuple[int, ...], values: tuple[int, ...]) -> tuple[int, ...]:
        candidates = [
            keep
            for keep in product(*(range(c + 1) for c in counts))
            if keep != counts and worth(keep, values) >= self._threshold
        ]
        if candidates:
            return min(candidates, key=lambda keep: (sum(keep), -worth(keep, values)))
        # Nothing short of everything reaches the threshold: give away one unit of the cheapest item.
        cheapest = min(range(len(counts)), key=lambda i: values[i])
        return tuple(c - (i == cheapest) for i, c in enumerate(counts))
