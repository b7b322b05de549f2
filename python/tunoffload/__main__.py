"""``python -m tunoffload`` and the ``tunoffload`` console script."""

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tunoffload`` command line; returns the process exit status.

    ``argv`` defaults to ``sys.argv[1:]``. See ``tunoffload --help``.
    """
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
