"""``python -m relaybox``: the ``relaybox`` command (see :mod:`relaybox.cli`)."""

import sys

from .cli import main

sys.exit(main())
