"""Batch-level credit assignment: pure, batched torch functions over rewards, masks and group ids.

Nothing here knows about environments: trainers pass rewards, masks and group ids in. Formulas and defaults follow
``shared/reference/reward-methods.md``; anything not confirmed there is marked "(unverified)" and sits behind a
flag that is off by default.
"""

from .gae import gae
from .gigpo import anchor_step_groups, gigpo_advantages, text_similarity
from .group import dr_grpo_advantages, grpo_advantages, rloo_advantages
from .normalize import GroupIds, group_index, group_mean, group_normalize, masked_mean, masked_var, masked_whiten
from .placement import (
    broadcast_to_tokens,
    broadcast_turn_values,
    gather_turn_values,
    place_outcome_reward,
    place_turn_rewards,
    turn_end_mask,
    turn_end_positions_to_mask,
)
from .process import (
    clip_rewards,
    delta_rewards,
    implicit_prm_score,
    implicit_prm_step_rewards,
    implicit_prm_token_rewards,
    par_reward,
    pure_min_form_rewards,
    pure_min_form_weights,
)
from .process_advantages import information_gain_rewards, oprl_advantages, prime_advantages
from .reinforce import reinforce_pp_advantages, reinforce_pp_baseline_advantages
from .returns import reward_to_go

__all__ = [
    "GroupIds",
    "anchor_step_groups",
    "broadcast_to_tokens",
    "broadcast_turn_values",
    "clip_rewards",
    "delta_rewards",
    "dr_grpo_advantages",
    "gae",
    "gather_turn_values",
    "gigpo_advantages",
    "group_index",
    "group_mean",
    "group_normalize",
    "grpo_advantages",
    "implicit_prm_score",
    "implicit_prm_step_rewards",
    "implicit_prm_token_rewards",
    "information_gain_rewards",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "oprl_advantages",
    "par_reward",
    "place_outcome_reward",
    "place_turn_rewards",
    "prime_advantages",
    "pure_min_form_rewards",
    "pure_min_form_weights",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "reward_to_go",
    "rloo_advantages",
    "text_similarity",
    "turn_end_mask",
    "turn_end_positions_to_mask",
]
