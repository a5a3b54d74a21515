"""Shared by the infra tests: where infra/ is, and finding the command-line tools they drive."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

INFRA = REPO_ROOT / "infra"
K8S = INFRA / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())


def tool(name: str, package: str) -> str:
    """Path of `name` (the venv's first); skips when missing, but fails under CI=true, where it must exist."""
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found:
        return found
    reason = f"`{name}` not found: pip install {package} (pinned in requirements/lock.txt)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)
