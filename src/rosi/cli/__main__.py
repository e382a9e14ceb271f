"""``python -m rosi.cli``: the ``rosi`` command."""

import sys

from rosi.cli import main

sys.exit(main())
