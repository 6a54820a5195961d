"""creditgym.wrappers (see DESIGN.md)."""
