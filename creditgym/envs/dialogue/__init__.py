"""Dialogue environments.

- `env.DialogueGatherEnv` (`creditgym/Dialogue-Gather-v0`, `-Hard-v0`): find out a simulated user's hidden
  requirements by asking questions, then propose. Users come from `scenarios`, are played by
  `simulator.RuleBasedUser` or `simulator.LLMUser`; `questioner.RuleBasedQuestioner` is a scripted baseline.
- `negotiation_v0`: two-player Deal or No Deal as a PettingZoo ParallelEnv (`.parallel_env()`) or AEC env
  (`.env()`); `negotiator.ScriptedNegotiator` is a scripted player. Imported on demand, so that single-agent
  users do not import PettingZoo.
"""

from creditgym.envs.dialogue.env import DialogueGatherEnv, GatherRewards
from creditgym.envs.dialogue.questioner import RuleBasedQuestioner
from creditgym.envs.dialogue.scenarios import DOMAINS, Scenario, generate_scenario
from creditgym.envs.dialogue.simulator import LLMUser, RuleBasedUser, UserReply, UserSimulator

__all__ = [
    "DOMAINS",
    "DialogueGatherEnv",
    "GatherRewards",
    "LLMUser",
    "RuleBasedQuestioner",
    "RuleBasedUser",
    "Scenario",
    "UserReply",
    "UserSimulator",
    "generate_scenario",
]
