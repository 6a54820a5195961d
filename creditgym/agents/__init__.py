"""creditgym.agents: PPO for small policies (`ppo`), the LLM trainers (`llm`), evaluation, run folders and
`compare`. Every trainer takes its rewards from the env and its wrappers, and its advantages from `creditgym.credit`."""
