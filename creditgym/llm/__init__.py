"""creditgym.llm (see DESIGN.md)."""
