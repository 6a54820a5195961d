"""A scripted questioner for the information-gathering dialogue (a baseline and a test of solvability).

It sees only what an agent sees: the observations and the reset info (`domain`, `slot_values`).

- `strategy="enumerate"` asks about every slot of the domain in turn, then proposes what it heard.
- `strategy="open"` asks open questions ("What else matters to you?") until the user says that is
  everything, then proposes; it needs one question per hidden slot plus one.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from creditgym.envs.dialogue.scenarios import DOMAINS
from creditgym.envs.dialogue.simulator import EVERYTHING_SAID
from creditgym.envs.dialogue.text import domain_index

OPEN_QUESTION = "What else matters to you?"


class RuleBasedQuestioner:
    def __init__(self, *, strategy: Literal["enumerate", "open"] = "enumerate") -> None:
        if strategy not in ("enumerate", "open"):
            raise ValueError(f"strategy must be 'enumerate' or 'open', got {strategy!r}")
        self.strategy = strategy
        self._domain = ""
        self._queue: list[str] = []
        self._heard: dict[str, str] = {}
        self._asked = False

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        self._domain = info["domain"]
        self._queue = list(info["slot_values"])
        self._heard = {}
        self._asked = False

    def act(self, observation: str) -> str:
        """The next message, given the user's latest one."""
        if self._asked:
            for slot, values in domain_index(self._domain).values_in(observation).items():
                # A correction ("No, not X. ... Y") names the true value last.
                self._heard[slot] = values[-1]
        self._asked = True
        if self.strategy == "open":
            if EVERYTHING_SAID in observation:
                return self._proposal()
            return OPEN_QUESTION
        if self._queue:
            return DOMAINS[self._domain].slot(self._queue.pop(0)).question
        return self._proposal()

    def _proposal(self) -> str:
        return f"<propose>{json.dumps(self._heard)}</propose>"
