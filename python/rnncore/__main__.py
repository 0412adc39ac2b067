"""``python -m rnncore``: the same as the ``rnncore`` command."""
import sys

from .cli import main

sys.exit(main())
