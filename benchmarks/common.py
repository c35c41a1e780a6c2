"""What the benchmark scripts share: the machine line of a results page, and the paper-app builders.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they import this
file as ``common``.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        if names:
            return names[0]
    return platform.processor() or platform.machine()


def machine(*versions: str) -> str:
    """CPU model, usable cores, Python and the given package versions, load average now (at the start)."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    extra = "".join(f", {v}" for v in versions)
    return (f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores; Python {platform.python_version()}{extra}; "
            f"load average {load} at the start")


def reproduce(command: str) -> list[str]:
    """The closing section of a results page: the command that regenerates it."""
    return ["## Reproduce", "", "```", command, "```", ""]


def publish(text: str, report: Path, *, write: bool = True) -> None:
    """Print a results page and, unless ``write`` is off, write it to ``report`` (under docs/results)."""
    print(text)
    if write:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(text)
        print(f"wrote {report.relative_to(ROOT)}")


def load_paper_apps() -> ModuleType:
    """Import ``scripts/build_paper_apps.py`` by path (``scripts/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("build_paper_apps", ROOT / "scripts" / "build_paper_apps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
