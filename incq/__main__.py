"""``python -m incq``: the ``incq`` command (see ``incq._tool.cli``)."""

import sys

from ._tool.cli import main

if __name__ == "__main__":  # not when a worker process re-imports this module
    sys.exit(main())
