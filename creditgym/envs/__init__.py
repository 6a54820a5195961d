"""Environments. Every env is registered here, and only here, under the `creditgym/` namespace."""

from __future__ import annotations

from gymnasium.envs.registration import register

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
    DESCRIPTIONS[_id] = f"{_description}; obs_mode array | rgb | text"


def registered_ids() -> list[str]:
    """Every id in gymnasium's registry under the creditgym/ namespace, sorted."""
    import gymnasium

    return sorted(env_id for env_id in gymnasium.registry if env_id.startswith("creditgym/"))


def obs_modes(env_id: str) -> tuple[str, ...]:
    """The observation modes an env declares in `metadata["obs_modes"]`; () for natively text envs."""
    import gymnasium
    from gymnasium.envs.registration import load_env_creator

    entry_point = gymnasium.spec(env_id).entry_point
    env_class = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    return tuple(getattr(env_class, "metadata", {}).get("obs_modes", ()))
