"""Tiny envs with a documented optimum, used to prove that an algorithm learns (as in PufferLib)."""
