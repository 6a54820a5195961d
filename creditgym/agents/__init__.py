"""creditgym.agents (see DESIGN.md)."""
