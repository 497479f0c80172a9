"""``python -m astromer_app`` runs the ``astromer`` command line."""

import sys

from .cli import main

sys.exit(main())
