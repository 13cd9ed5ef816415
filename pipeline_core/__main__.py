"""``python -m pipeline_core``: the pipeline command, for launchers that start a module rather
than a script (``torchrun -m pipeline_core sweep FILE``)."""

import sys

from pipeline_core.commands.cli import main

sys.exit(main())
