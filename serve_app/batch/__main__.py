"""``python -m serve_app.batch``: see :mod:`serve_app.batch.cli`."""

import sys

from serve_app.batch.cli import main

sys.exit(main())
