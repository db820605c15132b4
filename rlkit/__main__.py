"""``python -m rlkit ...`` is the ``rlkit`` command (launchers start modules this way)."""
import sys

from rlkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
