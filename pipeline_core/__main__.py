"""``python -m pipeline_core``: the pipeline command, for launchers that start a module rather
than a script (``torchrun -m pipeline_core sweep FILE``)."""

import sys

# first: a stop while the command is still importing is one line, not a traceback
from pipeline_core.commands.early import catch_startup_signals

catch_startup_signals()

from pipeline_core.commands.cli import main  # noqa: E402

sys.exit(main())
