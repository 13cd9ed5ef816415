"""The first thing the command does: a Ctrl-C, SIGTERM or SIGHUP while it is still starting is
one line and exit code 130, never a traceback.

Imported before anything else the command needs (by ``python -m pipeline_core`` before the
command line module, and by that module's first lines for the ``pipeline`` script), so the
window in which Python's own handler would print a traceback is as short as it can be made
from inside the package. ``main()`` takes over from these handlers once it runs.
"""

import os
import signal
import sys


def _interrupted_while_starting(signum: int, _frame: object) -> None:
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    os.write(2, f"interrupted ({name})\n".encode())
    os._exit(130)


def as_command() -> bool:
    """Started as the command (the ``pipeline`` script or ``python -m pipeline_core``), not imported
    by a test or a script."""
    argv0 = os.path.normpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return os.path.basename(argv0) == "pipeline" or argv0.endswith(os.path.join("pipeline_core", "__main__.py"))


def catch_startup_signals() -> None:
    """One line and 130 for a stop signal from now until ``main()`` installs its own handling."""
    for name, default in (("SIGINT", signal.default_int_handler), ("SIGTERM", signal.SIG_DFL),
                          ("SIGHUP", signal.SIG_DFL)):
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) is default:
            signal.signal(signum, _interrupted_while_starting)
