"""``python -m dhtcart``: the ``dhtcart`` command (with no arguments, its help)."""

import sys

from dhtcart.cli import main

if __name__ == "__main__":
    sys.exit(main())
