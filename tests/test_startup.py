"""Commands that need no model start without importing torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = ("import sys; from pipeline_core.commands import cli; code = cli.main({args!r}); "
         "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code)")


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["run", "--help"], ["sweep", "--help"]])
def test_version_and_help_do_not_import_torch(args):
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PIPELINE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "NO-TORCH 0", done.stdout[-500:]


def test_the_command_itself_imports_no_torch_for_its_version():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline_core", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("pipeline ")
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "pipeline_core.commands.cli" in modules and "torch" not in modules
