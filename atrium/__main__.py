"""``python -m atrium``: the command-line tools in :mod:`atrium.cli`."""
import sys

from atrium.cli import main

sys.exit(main())
