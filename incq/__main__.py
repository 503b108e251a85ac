"""``python -m incq``: the ``incq`` command (see ``incq._cli``)."""

import sys

from ._cli import main

if __name__ == "__main__":  # not when a worker process re-imports this module
    sys.exit(main())
