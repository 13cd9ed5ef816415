"""The README's install blocks are the real ones: a newcomer who copies them gets what it says, and
the test block installs and runs what CI does (.ci/run). (The recipe and the --set examples the
recipes page shows are checked in test_docs.py.)"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _bash_block(heading: str) -> list[str]:
    """The commands of the first bash block under ``heading``, comments and blank lines left out."""
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"the {heading!r} section has no bash block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def _cpu_torch_line(lines: list[str]) -> str:
    found = [line for line in lines if "download.pytorch.org/whl/cpu" in line]
    assert len(found) == 1, lines
    return found[0]


def test_the_install_blocks_install_the_cpu_build_of_the_torch_the_package_accepts():
    from packaging.requirements import Requirement

    required = {Requirement(r).name: Requirement(r).specifier
                for r in _setup_cfg()["options"]["install_requires"].split("\n") if r.strip()}
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    for heading in ("Install and run", "Run the tests"):
        lines = _bash_block(heading)
        torch_line = _cpu_torch_line(lines)
        assert torch_line.startswith("pip install ") and \
            "--extra-index-url https://download.pytorch.org/whl/cpu" in torch_line  # PyPI stays the fallback
        for name in ("torch", "torchvision"):
            pin = re.search(rf'"{name}==([0-9.]+)"', torch_line)
            assert pin and pin.group(1) in required[name], (torch_line, required[name])  # one the package accepts
            assert f'"{name}=={pin.group(1)}"' in ci, f"the README pins {name} {pin.group(1)}, CI another"
        others = [i for i, line in enumerate(lines) if line.startswith("pip install ") and line != torch_line]
        assert others and lines.index(torch_line) < min(others), "torch's CPU build comes first, or pip fetches CUDA's"
        section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
        assert "GPU" in section.split("```bash", 1)[1].split("```", 1)[0], "the block says what a GPU machine does"


def test_the_test_block_installs_and_runs_what_ci_does():
    lines = _bash_block("Run the tests")
    install = next(line for line in lines if line.startswith("pip install ") and "whl/cpu" not in line)
    examples = sorted({p.parent.name for name in ("setup.cfg", "pyproject.toml") for p in ROOT.glob(f"examples/*/{name}")})
    assert '".[test,timm]"' in install and examples, install
    for name in examples:  # .ci/run installs every example package
        assert f"examples/{name}" in install, f"the README's test block does not install examples/{name}, as CI does"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert '".[test,timm]"' in ci and "examples/*/" in ci
    ci_tests = [line.strip() for line in ci.splitlines() if line.strip().startswith("python -m pytest")]
    readme_tests = [line for line in lines if line.startswith("python -m pytest")]
    assert ci_tests == readme_tests[:1], (ci_tests, readme_tests)


def test_the_fast_loop_leaves_out_a_registered_mark():
    fast = [line for line in _bash_block("Run the tests") if line.startswith("python -m pytest") and ' -m "' in line]
    assert fast == ['python -m pytest -q -m "not slow"'], fast
    marks = [m.split(":")[0].strip() for m in _setup_cfg()["tool:pytest"]["markers"].split("\n") if m.strip()]
    assert "slow" in marks and "--strict-markers" in _setup_cfg()["tool:pytest"]["addopts"]
