import sys

from pipeline_core.commands.cli import main

sys.exit(main())
