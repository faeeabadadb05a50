"""``python -m skywire_trio``: the command line (skywire_trio/cli/)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
