"""``python -m mpi`` is the ``mpi`` command."""

import sys

from mpi.cli import main

sys.exit(main())
