"""Two-player Deal or No Deal as a PettingZoo ParallelEnv with text observations and actions."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo import AECEnv, ParallelEnv

from creditgym.envs.arguments import FiniteRewards, reward_sizes
from creditgym.envs.dialogue.deal import (
    ITEMS,
    MAX_CHAT_CHARS,
    Accept,
    Chat,
    Invalid,
    NoDeal,
    Offer,
    describe_items,
    describe_values,
    generate_game,
    parse_action,
    worth,
)
from creditgym.envs.dialogue.text import sanitize
from creditgym.envs.lifecycle import require_reset
from creditgym.envs.options import reset_options
from creditgym.envs.text_space import TextSpace

AGENTS = ("player_0", "player_1")
MAX_OBSERVATION_LENGTH = 2048


class TextObservation(str):
    """A plain `str` that also has the `dtype` of gymnasium's `Text` space.

    pettingzoo.test.api_test compares `observation_space.dtype` with `observation.dtype`, which a bare `str`
    lacks; otherwise this behaves exactly like `str` (operations on it return `str`).
    """

    dtype = np.dtype(str)


@dataclass(frozen=True)
class NegotiationRewards(FiniteRewards):
    """Reward sizes: a deal pays `deal` times the value of the player's own share (0 to 10)."""

    deal: float = 1.0
    no_deal: float = 0.0
    invalid_action: float = -0.1


class NegotiationEnv(ParallelEnv):
    """Deal or No Deal (Lewis et al. 2017) between two players who take turns.

    ## Description
    A pool of books, hats and balls is to be split. Each player has private values (the whole pool is worth
    10 to each, see `creditgym.envs.dialogue.deal`). Players take turns; who starts is drawn with the
    env's RNG. A deal pays each player the value of its share; no deal (walking away or running out of
    moves) pays `no_deal` (0 by default).

    ## Action Space
    `Text` per agent. Only the player whose turn it is acts (`info["your_turn"]`); the other player's action
    is ignored, whatever it is. Moves: a chat message, `<propose>{"books": 1, "hats": 2, "balls": 0}</propose>`
    (what the proposer keeps), `<accept>` (the partner's standing proposal) or `<nodeal>`. A proposal stands
    until either player makes a new one. An invalid move (see `deal.parse_action`, or `<accept>` with no
    standing proposal from the partner) changes nothing, costs `invalid_action`, is explained in the next
    observation, and the turn does not pass.

    ## Observation Space
    `Text` per agent (printable ASCII): what just happened (the partner's message, on one line, or proposal,
    or why the own move was invalid) and whose turn it is. Reset observations give the pool and the player's
    values.

    ## Rendering
    `render_mode="ansi"` returns the pool and the moves so far as text; `"human"` prints it.

    ## Reward components
    Each agent's `info["reward_components"]`: `task` (the value of its share at a deal, times `deal`) and
    `format` (its invalid moves).

    ## Episode End
    Terminated for both by `<accept>` or `<nodeal>`; truncated for both after `max_turns` steps (invalid ones
    included) without either. `info["success"]` (a deal was made) is set at the end.

    ## Info
    Per agent: `instructions` (at reset: the rules and move format, a system prompt), `reward_components`,
    `invalid_action`, `your_turn`, `counts`, `values` (its own),
    `partner_offer` (what the partner's standing proposal gives this agent, or None); at the end `success`
    and `deal` (this agent's share, or None).

    ## State
    `state()` is creditgym's state for reward design, as in the single-agent envs: the whole game as plain data
    (a dict with the pool, both players' values, the turn, the standing offer, the deal and the transcript).
    It is not PettingZoo's optional global-state API, which returns an array described by `state_space` for
    centralised critics (QMIX, MAPPO): there is no `state_space`, and `pettingzoo.test.state_test` does not apply.
    A critic that needs a global state can encode `state()` itself.

    ## Registered IDs
    Not in gymnasium's registry (it is multi-agent): use `creditgym.envs.dialogue.negotiation_v0.parallel_env()`
    or `.env()` (`NegotiationAECEnv`, turn-based: `agent_selection` is always the player to move).

    ## Version History
    - v0: initial release.
    """

    metadata = {"name": "negotiation_v0", "render_modes": ["human", "ansi"], "is_parallelizable": True}

    def __init__(
        self, *, max_turns: int = 20, rewards: NegotiationRewards | Mapping[str, float] | None = None,
        render_mode: str | None = None,
    ) -> None:
        if isinstance(max_turns, bool) or not isinstance(max_turns, int | np.integer) or max_turns < 2:
            raise ValueError(f"max_turns must be a whole number of at least 2, so that both players can move; "
                             f"got {max_turns!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.max_turns = int(max_turns)
        self.rewards = reward_sizes(NegotiationRewards, rewards)
        self.render_mode = render_mode
        self.possible_agents = list(AGENTS)
        self.agents: list[str] = []
        self._observation_spaces = {
            a: TextSpace(max_length=MAX_OBSERVATION_LENGTH, min_length=1, charset=string.printable) for a in AGENTS
        }
        self._action_spaces = {a: TextSpace(max_length=MAX_CHAT_CHARS, charset=string.printable) for a in AGENTS}
        self._np_random: np.random.Generator | None = None
        self._counts: tuple[int, ...] = (0,) * len(ITEMS)
        self._values: tuple[tuple[int, ...], ...] = ((0,) * len(ITEMS),) * 2
        self._turn = 0
        self._turn_count = 0
        self._offer: tuple[int, tuple[int, ...]] | None = None
        self._deal: tuple[int, ...] | None = None
        self._transcript: list[str] = []
        self._has_reset = False

    def observation_space(self, agent: str) -> spaces.Space:
        return self._observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._action_spaces[agent]

    def step(
        self, actions: dict[str, Any]
    ) -> tuple[dict[str, str], dict[str, float], dict[str, bool], dict[str, bool], dict[str, dict]]:
        if not isinstance(actions, Mapping):
            raise TypeError(f"actions must be a dict from agent name to text, got {type(actions).__name__}")
        require_reset(self._has_reset, "step")
        if not self.agents:
            return {}, {}, {}, {}, {}
        me, other = self._turn, 1 - self._turn
        move = parse_action(actions.get(AGENTS[me]), self._counts)
        if isinstance(move, Accept) and (self._offer is None or self._offer[0] != other):
            move = Invalid("there is no standing proposal from your partner to accept")
        self._turn_count += 1
        task = [0.0, 0.0]
        format_ = [0.0, 0.0]
        invalid = isinstance(move, Invalid)
        ended = isinstance(move, Accept | NoDeal)
        notes = ["", ""]
        truncated = not ended and self._turn_count >= self.max_turns
        if isinstance(move, Invalid):
            format_[me] = self.rewards.invalid_action
            notes[me] = f"Invalid move: {move.reason}." + ("" if truncated else " It is still your turn.")
        elif isinstance(move, Chat):
            # One line: a message cannot fake the env's own lines ("It is your turn.", "Partner proposes: ...").
            said = sanitize(" ".join(move.text.split()), MAX_CHAT_CHARS)
            self._transcript.append(f"{AGENTS[me]}: {said}")
            notes[other] = f'Partner says: "{said}"'
            self._turn = other
        elif isinstance(move, Offer):
            self._offer = (me, move.keep)
            given = tuple(c - k for c, k in zip(self._counts, move.keep, strict=True))
            self._transcript.append(f"{AGENTS[me]} proposes to keep {describe_items(move.keep)}")
            notes[other] = (
                f"Partner proposes: you get {describe_items(given)} (worth {worth(given, self._values[other])} "
                f"to you), partner keeps {describe_items(move.keep)}."
            )
            if not truncated:
                notes[other] += " Reply with <accept>, a counter <propose>...</propose>, a message, or <nodeal>."
            self._turn = other
        elif isinstance(move, Accept):
            assert self._offer is not None
            proposer, keep = self._offer
            shares = [keep, tuple(c - k for c, k in zip(self._counts, keep, strict=True))]
            if proposer == 1:
                shares.reverse()
            self._deal = shares[0]
            for i in range(2):
                task[i] = self.rewards.deal * worth(shares[i], self._values[i])
                notes[i] = f"Deal! You get {describe_items(shares[i])}, worth {worth(shares[i], self._values[i])}."
            self._transcript.append(f"{AGENTS[me]} accepts")
        else:
            task = [self.rewards.no_deal, self.rewards.no_deal]
            notes = ["No deal. Nobody gets anything."] * 2
            self._transcript.append(f"{AGENTS[me]} walks away")
        if truncated:  # running out of time is no deal, as in Lewis et al. (2017): stalling must not beat <nodeal>
            task = [self.rewards.no_deal, self.rewards.no_deal]
            notes = [f"{n} Time is up: no deal.".strip() for n in notes]
        observations, rewards, terminations, truncations, infos = {}, {}, {}, {}, {}
        for i, agent in enumerate(AGENTS):
            observations[agent] = self._observe(i, notes[i], ended or truncated)
            rewards[agent] = task[i] + format_[i]
            terminations[agent] = ended
            truncations[agent] = truncated
            infos[agent] = self._info(i, task[i], format_[i], invalid and i == me)
            if ended or truncated:
                infos[agent]["success"] = self._deal is not None
                infos[agent]["deal"] = None if self._deal is None else list(self._share(i))
        if ended or truncated:
            self.agents = []
        return observations, rewards, terminations, truncations, infos

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict[str, str], dict[str, dict]]:
        reset_options(options)
        self._has_reset = True
        if seed is not None or self._np_random is None:
            self._np_random, _ = seeding.np_random(seed)
        self._counts, self._values = generate_game(self._np_random)
        self._turn = int(self._np_random.integers(2))
        self._turn_count = 0
        self._offer = None
        self._deal = None
        self._transcript = []
        self.agents = list(AGENTS)
        observations, infos = {}, {}
        for i, agent in enumerate(AGENTS):
            intro = (
                f"Deal or No Deal. Split the pool: {describe_items(self._counts)}. Your values: "
                f"{describe_values(self._values[i])} (the whole pool is worth 10 to you; your partner's values "
                f"are private). Moves: a message, <propose>{{\"books\": 1, \"hats\": 0, \"balls\": 2}}</propose> "
                "(what you keep), <accept> or <nodeal>."
            )
            observations[agent] = self._observe(i, intro, False)
            infos[agent] = {**self._info(i, 0.0, 0.0, False), "instructions": self._instructions()}
        return observations, infos

    def _instructions(self) -> str:
        """The rules and move format, the same for both players: a system prompt, as every creditgym env gives."""
        scale = "" if self.rewards.deal == 1 else f" times {self.rewards.deal:g}"
        return (
            "You negotiate in Deal or No Deal. You and a partner split a pool of books, hats and balls. Each of "
            "you values the items privately; the whole pool is worth 10 to each. Take turns. Each turn make one "
            "move: a message to your partner; <propose>{\"books\": 1, \"hats\": 0, \"balls\": 2}</propose>, the "
            "items you keep (your partner gets the rest); <accept> to take your partner's standing proposal; or "
            f"<nodeal> to walk away. A deal pays each of you the value of your share{scale}; "
            f"no deal pays {self.rewards.no_deal:g}. Without a deal after {self.max_turns} moves (invalid moves "
            "count), time is up and there is no deal. "
            f"A move that is none of these costs {self.rewards.invalid_action:g}."
        )

    def render(self) -> str | None:
        """The pool and the moves so far: returned for `ansi`, printed for `human`."""
        if self.render_mode is None:
            return None
        text = "\n".join([f"Pool: {describe_items(self._counts)}", *self._transcript])
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def close(self) -> None:
        pass

    @property
    def agent_to_move(self) -> str:
        """The player whose move the next step reads."""
        return AGENTS[self._turn]

    def state(self) -> dict[str, Any]:
        """The whole game as plain data (both players' values included); not PettingZoo's state array (see the
        class docstring, "State")."""
        return {
            "counts": list(self._counts),
            "values": [list(v) for v in self._values],
            "turn": AGENTS[self._turn],
            "turn_count": self._turn_count,
            "offer": None if self._offer is None else {"by": AGENTS[self._offer[0]], "keep": list(self._offer[1])},
            "deal": None if self._deal is None else list(self._deal),
            "transcript": list(self._transcript),
        }

    # -- internals ------------------------------------------------------------------------------------
    def _share(self, player: int) -> tuple[int, ...]:
        assert self._deal is not None
        if player == 0:
            return self._deal
        return tuple(c - k for c, k in zip(self._counts, self._deal, strict=True))

    def _observe(self, player: int, note: str, over: bool) -> TextObservation:
        if over:
            return TextObservation(note)
        turn = "It is your turn." if player == self._turn else "Waiting for your partner."
        return TextObservation(f"{note}\n{turn}" if note else turn)

    def _info(self, player: int, task: float, format_: float, invalid: bool) -> dict[str, Any]:
        offer = None
        if self._offer is not None and self._offer[0] != player:
            offer = [c - k for c, k in zip(self._counts, self._offer[1], strict=True)]
        return {
            "reward_components": {"task": task, "format": format_},
            "invalid_action": invalid,
            "your_turn": player == self._turn,
            "counts": list(self._counts),
            "values": list(self._values[player]),
            "partner_offer": offer,
        }


class NegotiationAECEnv(AECEnv):
    """The same game as `NegotiationEnv`, turn-based: only the player to move is selected, as in PettingZoo's
    classic board games. (`parallel_to_aec` would select both players every turn and throw away the waiting
    player's move: twice the generations for an LLM policy.) One step is one move; `max_turns` counts moves.
    """

    metadata = {**NegotiationEnv.metadata, "is_parallelizable": False}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.game = NegotiationEnv(**kwargs)
        self.possible_agents = list(AGENTS)
        self.render_mode = self.game.render_mode
        self.agents = []
        self._observations: dict[str, str] = {}
        self._has_reset = False

    def observation_space(self, agent: str) -> spaces.Space:
        return self.game.observation_space(agent)

    def action_space(self, agent: str) -> spaces.Space:
        return self.game.action_space(agent)

    def reset(self, seed: int | None = None, options: dict | None = None) -> None:
        self._observations, self.infos = self.game.reset(seed=seed, options=options)
        self._has_reset = True
        self.agents = list(AGENTS)
        self.rewards = dict.fromkeys(AGENTS, 0.0)
        self._cumulative_rewards = dict.fromkeys(AGENTS, 0.0)
        self.terminations = dict.fromkeys(AGENTS, False)
        self.truncations = dict.fromkeys(AGENTS, False)
        self.agent_selection = self.game.agent_to_move

    def observe(self, agent: str) -> str:
        return self._observations[agent]

    def step(self, action: Any) -> None:
        require_reset(self._has_reset, "step")
        if not self.agents:
            return
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        self._cumulative_rewards[agent] = 0.0
        observations, self.rewards, self.terminations, self.truncations, self.infos = self.game.step({agent: action})
        self._observations = observations
        self._accumulate_rewards()
        # At the end both players are done: the one who moved is stepped with None first, then the other.
        self.agent_selection = agent if not self.game.agents else self.game.agent_to_move

    def render(self) -> str | None:
        return self.game.render()

    def state(self) -> dict[str, Any]:
        return self.game.state()

    def close(self) -> None:
        self.game.close()
