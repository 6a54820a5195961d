"""Environments. Every env is registered here, and only here, under the `creditgym/` namespace."""

from __future__ import annotations

from gymnasium.envs.registration import WrapperSpec, register

#: One line per registered id, shown by `creditgym list`.
DESCRIPTIONS: dict[str, str] = {}

# variant -> (time limit, description)
_SOKOBAN_VARIANTS = {
    "6x6-1b": (120, "Sokoban, 6x6 rooms with 1 box (RAGEN's SimpleSokoban size)"),
    "6x6-2b": (120, "Sokoban, 6x6 rooms with 2 boxes"),
    "8x8-2b": (160, "Sokoban, 8x8 rooms with 2 boxes"),
    "10x10-3b": (200, "Sokoban, 10x10 rooms with 3 boxes"),
}

for _variant, (_max_steps, _description) in _SOKOBAN_VARIANTS.items():
    _id = f"creditgym/Sokoban-{_variant}-v0"
    register(
        id=_id,
        entry_point="creditgym.envs.sokoban.env:SokobanEnv",
        vector_entry_point="creditgym.envs.sokoban.vector:SokobanVectorEnv",
        max_episode_steps=_max_steps,
        kwargs={"levels": _variant},
    )
    DESCRIPTIONS[_id] = f"{_description}; obs_mode array | egocentric | rgb | text"

register(
    id="creditgym/Sanity-Bandit-v0",
    entry_point="creditgym.envs.sanity.bandit:ContextBanditEnv",
)  # no time limit: the env ends every episode itself, and a limit of 1 would also mark each one truncated
DESCRIPTIONS["creditgym/Sanity-Bandit-v0"] = "sanity check: a 4-arm contextual bandit, optimal return 1"
register(
    id="creditgym/Sanity-WordBandit-v0",
    entry_point="creditgym.envs.sanity.words:WordBanditEnv",
    max_episode_steps=4,
)
DESCRIPTIONS["creditgym/Sanity-WordBandit-v0"] = (
    "sanity check for LLM policies: a two-armed bandit in words, doors A and B (chance success 0.5); text"
)

# -- Dialogue (information gathering; the two-player negotiation is PettingZoo: envs.dialogue.negotiation_v0)
register(
    id="creditgym/Dialogue-Gather-v0",
    entry_point="creditgym.envs.dialogue.env:DialogueGatherEnv",
    max_episode_steps=30,
)
DESCRIPTIONS["creditgym/Dialogue-Gather-v0"] = (
    "dialogue: ask a rule-based user about 3-6 hidden requirements, then <propose>{json}</propose>; text"
)
register(
    id="creditgym/Dialogue-Gather-Hard-v0",
    entry_point="creditgym.envs.dialogue.env:DialogueGatherEnv",
    max_episode_steps=30,
    kwargs={"min_slots": 5, "max_slots": 6, "tight_patience": True},
)
DESCRIPTIONS["creditgym/Dialogue-Gather-Hard-v0"] = (
    "dialogue: 5-6 hidden requirements and patience for only hidden+2 questions; text"
)

# -- MiniGrid / BabyAI as text (array versions stay under minigrid's own ids); limits match minigrid's max_steps
_MINIGRID_TEXT = {
    "MiniGridText-DoorKey-5x5": ("MiniGrid-DoorKey-5x5-v0", 250, "MiniGrid DoorKey 5x5: fetch the key, open the door"),
    "BabyAIText-GoToObj": ("BabyAI-GoToObj-v0", 64, "BabyAI GoToObj: go to the one object in the room"),
    "BabyAIText-GoToLocal": ("BabyAI-GoToLocal-v0", 64, "BabyAI GoToLocal: go to an object among distractors"),
}
for _name, (_minigrid_id, _max_steps, _description) in _MINIGRID_TEXT.items():
    _id = f"creditgym/{_name}-v0"
    register(
        id=_id,
        entry_point="creditgym.envs.minigrid_text:MiniGridTextEnv",
        max_episode_steps=_max_steps,
        kwargs={"env_id": _minigrid_id},
    )
    DESCRIPTIONS[_id] = f"{_description}; partial view as sentences, text actions"

# -- Shop (WebShop-like); the catalog is built once per (seed, size) and cached on disk
# v1: v0's clothing and bed sizes matched each other under WebShop's word-subset rule (see ShopEnv's history).
for _name, _num_products in (("Shop", 2000), ("Shop-100k", 100_000)):
    _id = f"creditgym/{_name}-v1"
    register(
        id=_id,
        entry_point="creditgym.envs.shop.env:ShopEnv",
        max_episode_steps=15,
        kwargs={"num_products": _num_products},
    )
    DESCRIPTIONS[_id] = f"WebShop-like shopping over {_num_products:,} products with bm25 search; text"

# -- ToolUse: variant -> (fewest, most calls in the reference plan). The env leaves the time limit to TimeLimit, and
# RevealAtTimeLimit, applied over it, reveals the plan on its last step, so `max_episode_steps=N` works as documented.
_REVEAL_AT_TIME_LIMIT = WrapperSpec("RevealAtTimeLimit", "creditgym.envs.tooluse.env:RevealAtTimeLimit", {})
for _name, (_min_calls, _max_calls) in {"ToolUse": (1, 4), "ToolUse-Easy": (1, 1), "ToolUse-Hard": (3, 4)}.items():
    _id = f"creditgym/{_name}-v1"
    register(
        id=_id,
        entry_point="creditgym.envs.tooluse.env:ToolUseEnv",
        max_episode_steps=10,
        kwargs={"min_calls": _min_calls, "max_calls": _max_calls},
        additional_wrappers=(_REVEAL_AT_TIME_LIMIT,),
    )
    DESCRIPTIONS[_id] = (
        f"tool use: {_min_calls}-{_max_calls} dependent calls (calculator, units, currency, inventory SQL, dates), "
        "ToolRL tool reward; text"
    )


def registered_ids() -> list[str]:
    """Every id in gymnasium's registry under the creditgym/ namespace, sorted."""
    import gymnasium

    return sorted(env_id for env_id in gymnasium.registry if env_id.startswith("creditgym/"))


def check_env_id(env_id: str) -> None:
    """A ValueError unless `env_id` is registered, with gymnasium's hint where it has one (a newer version of a
    deprecated id, a near miss of the name)."""
    import gymnasium

    try:
        gymnasium.spec(env_id)
    except gymnasium.error.Error as err:
        raise ValueError(f"env {env_id!r} is not registered; `creditgym list` shows the ids. {err}") from None


def obs_modes(env_id: str) -> tuple[str, ...]:
    """The observation modes an env declares in `metadata["obs_modes"]`; () for natively text envs."""
    import gymnasium
    from gymnasium.envs.registration import load_env_creator

    entry_point = gymnasium.spec(env_id).entry_point
    env_class = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    return tuple(getattr(env_class, "metadata", {}).get("obs_modes", ()))


def env_state(env: object) -> dict | None:
    """`env.unwrapped.state()` where the env declares it (what recordings keep, e.g. a Sokoban board); None
    otherwise."""
    state = getattr(getattr(env, "unwrapped", None), "state", None)
    return state() if callable(state) else None
