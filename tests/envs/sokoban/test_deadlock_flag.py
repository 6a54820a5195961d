"""SokobanEnv's deadlock flag: sticky within an episode, and computed (not assumed False) at reset.

The batched `SokobanVectorEnv` has no deadlock flag (its info keys are `reward_components`, `success`,
`boxes_on_target`, `level_index`, `final_obs` and `action_mask`), so only the single env is tested here.
"""

from __future__ import annotations

from creditgym.envs.sokoban.bank import LevelBank
from creditgym.envs.sokoban.env import SokobanEnv
from creditgym.envs.sokoban.level import Level
from creditgym.envs.sokoban.rules import Action

# Box A at (1, 2) goes LEFT into the non-target corner (1, 1); box B at (3, 2) can then be pushed DOWN to
# (4, 2), against a wall but not into a corner, so that push alone would report no deadlock.
TWO_BOXES = Level.from_rows(["######", "# $@ #", "#    #", "# $ .#", "#   .#", "######"])
# Both boxes start in non-target corners, (1, 1) and (3, 4): the level is dead before the first move.
DEAD_AT_START = Level.from_rows(["######", "#$@ .#", "#   .#", "#   $#", "######"])
# The same room with its corner box on a target: corners that are targets are not deadlocks.
CORNER_ON_TARGET = Level.from_rows(["######", "#*@  #", "#    #", "#$  .#", "#    #", "######"])


def _env(*levels: Level) -> SokobanEnv:
    return SokobanEnv(levels=LevelBank.from_levels(list(levels)))


def test_levels_are_valid() -> None:
    # Level() checks boxes == targets and an enclosed room; a typo in the rows would fail here, not below.
    assert TWO_BOXES.num_boxes == 2 and len(TWO_BOXES.targets) == 2
    assert DEAD_AT_START.num_boxes == 2 and len(DEAD_AT_START.targets) == 2
    assert CORNER_ON_TARGET.boxes_on_target == 1


def test_deadlock_stays_true_when_another_box_is_pushed() -> None:
    env = _env(TWO_BOXES)
    _, info = env.reset(seed=0)
    assert info["deadlock"] is False
    info = env.step(Action.LEFT)[4]
    assert env.level.boxes == [(1, 1), (3, 2)] and info["deadlock"] is True
    env.step(Action.DOWN)  # walk to (2, 2), pushing nothing
    info = env.step(Action.DOWN)[4]
    # Box B really moved (to a non-corner cell); a dead box never comes back, so the flag must not clear.
    assert env.level.boxes == [(1, 1), (4, 2)]
    assert info["deadlock"] is True and env.state()["deadlock"] is True


def test_reset_reports_a_level_that_starts_deadlocked() -> None:
    env = _env(DEAD_AT_START)
    _, info = env.reset(seed=0)
    assert info["deadlock"] is True and env.state()["deadlock"] is True
    # A move that pushes nothing does not recompute the flag, so reset is the only place it can be set.
    assert env.step(Action.RIGHT)[4]["deadlock"] is True


def test_reset_recomputes_the_flag_for_each_level() -> None:
    env = _env(TWO_BOXES)
    env.reset(seed=0)
    assert env.step(Action.LEFT)[4]["deadlock"] is True
    # A new episode on a live level starts clean; one on a dead level starts flagged.
    assert env.reset(options={"level": TWO_BOXES})[1]["deadlock"] is False
    env = _env(CORNER_ON_TARGET)
    assert env.reset(seed=0)[1]["deadlock"] is False
    env = _env(DEAD_AT_START)
    env.reset(seed=0)
    assert env.reset(seed=1)[1]["deadlock"] is True  # the second reset recomputes rather than keeping it
