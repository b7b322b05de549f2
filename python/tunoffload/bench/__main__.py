"""``python -m tunoffload.bench``: the same as ``tunoffload bench``."""

import sys

from tunoffload.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
