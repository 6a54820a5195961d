"""Sokoban: levels, generator, solver, Boxoban I/O, the single env and the batched torch env."""
