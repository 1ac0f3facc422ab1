"""``python -m nlstm``: the ``nlstm`` command (see :mod:`nlstm.cli`)."""
import sys

from .cli import main, selfcheck  # noqa: F401 - selfcheck kept importable from here

if __name__ == "__main__":
    sys.exit(main())
