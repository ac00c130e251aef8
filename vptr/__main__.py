"""``python -m vptr ...`` (and ``torchrun -m vptr ...``): the ``vptr`` command."""

import sys

from vptr.cli import main

if __name__ == "__main__":
    sys.exit(main())
