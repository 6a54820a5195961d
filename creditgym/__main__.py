"""`python -m creditgym` runs the `creditgym` command line."""

from creditgym.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
