"""creditgym.credit (see DESIGN.md)."""
