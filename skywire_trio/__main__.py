"""``python -m skywire_trio``: the command line (skywire_trio/cli/)."""

import sys

from .memory import use_system_allocator

if __name__ == "__main__":
    # Before the imports below: the service may start again at once (memory.py).
    use_system_allocator(sys.argv[1:])

from .cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
