"""The interop run is opt-in: nothing here is collected (or imported) unless INCQ_INTEROP=1.

It needs vLLM's CPU build, transformers and auto-round in a separate environment (run.sh makes
one); the main suite never imports them.
"""

import os

if os.environ.get("INCQ_INTEROP") != "1":
    collect_ignore_glob = ["*.py"]
else:
    def pytest_terminal_summary(terminalreporter):
        from test_interop import TABLES

        for title, lines in TABLES:
            terminalreporter.write_sep("=", title)
            for line in lines:
                terminalreporter.write_line(line)
