"""Test-wide set-up.

CI runs the suite with no standard input at all (file descriptor 0
closed).  IPython, which ipywidgets imports, asks the encoding of
``sys.stdin`` at import time, and pytest's stand-in for stdin answers only
while ``sys.__stdin__`` exists: give the process an empty stdin then, so
the widget tests run the same with and without a terminal.
"""

import os
import sys

if sys.__stdin__ is None:
    sys.__stdin__ = open(os.devnull)      # noqa: SIM115 -- lives as long as the process
