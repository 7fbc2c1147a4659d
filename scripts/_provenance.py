"""What every figure in docs/ records beside it: the hardware and the commit that produced it."""

import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_report(path, data: dict) -> Path:
    """Write a benchmark's JSON atomically, with the commit, the CPU and the command that made it
    (unless ``data`` already names them)."""
    import json
    import sys

    from napari_dpn.files import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"commit": commit(), "cpu": cpu_model(), "command": "python " + " ".join(sys.argv), **data}
    with atomic_write(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1) + "\n")
    return path
