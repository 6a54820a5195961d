"""How a reward wrapper adds its channel to `info["reward_components"]`, the same way in every wrapper."""

from __future__ import annotations

from typing import Any


def with_channel(info: dict[str, Any], channel: str, value: Any) -> dict[str, Any]:
    """`info` with `value` added as `channel` of its reward components. Wrappers call it at reset too (with 0), so
    that every step and reset of an episode reports the same channels and a clash is found at reset."""
    components = info.get("reward_components")
    if not isinstance(components, dict):
        raise ValueError("reward wrappers add a channel to info['reward_components'], which this env does not report "
                         "(creditgym envs do, with the channels summing to the reward); wrap a creditgym env, or "
                         "add the dict to your env's info at reset and at every step")
    if channel in components:
        raise ValueError(f"reward channel {channel!r} is already set by an inner wrapper; pass channel='...' with "
                         "another name to stack a second wrapper of this kind")
    return {**info, "reward_components": {**components, channel: value}}
