"""The interop run is opt-in: nothing here is collected (or imported) unless INCQ_INTEROP=1.

It needs vLLM's CPU build, transformers and auto-round in a separate environment (run.sh makes
one); the main suite never imports them.
"""

import os

import pytest

if os.environ.get("INCQ_INTEROP") != "1":
    collect_ignore_glob = ["*.py"]
else:
    @pytest.fixture(scope="session")
    def interop_tables(pytestconfig):
        """(title, lines) tables the tests print at the end of the run."""
        return pytestconfig.__dict__.setdefault("_incq_interop_tables", [])

    def pytest_terminal_summary(terminalreporter, config):
        for title, lines in getattr(config, "_incq_interop_tables", []):
            terminalreporter.write_sep("=", title)
            for line in lines:
                terminalreporter.write_line(line)
