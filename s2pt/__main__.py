"""``python -m s2pt``: see s2pt/cli.py."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
