"""``python -m mailgate``: the command line."""

from mailgate.edges.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
