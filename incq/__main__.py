"""``python -m incq``: the ``incq`` command (see ``incq._cli``)."""

import sys

from ._cli import main

sys.exit(main())
