"""No stale cache on Kubeflow: the compiled pipelines pin images by a tag that names their build context, the tag
follows the code, and tasks that can fail for a passing reason retry."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from stgt_pipeline.kfp.build import images, task_config
from stgt_pipeline.pipelines import index_pipeline
from stgt_pipeline.pipelines.stgt_pipeline import COMPILED
from tests.pipeline.test_kfp_pipeline import all_tasks, load

# `<repository>/<name>:<version>-<12 hex>` (a build-context digest) or `<anything>@sha256:<64 hex>`.
PINNED = re.compile(r"[\w.\-/]+:\d+\.\d+\.\d+-[0-9a-f]{12}|[\w.\-/:]+@sha256:[0-9a-f]{64}")


def images_in(path: Path) -> set[str]:
    spec = next(yaml.safe_load_all(path.read_text()))
    return {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values() if "container" in e}


@pytest.mark.parametrize("compiled", [Path(COMPILED), index_pipeline.COMPILED], ids=["stgt", "index"])
def test_compiled_pipelines_pin_every_image(compiled: Path) -> None:
    found = images_in(compiled)
    assert found
    mutable = sorted(i for i in found if not PINNED.fullmatch(i))
    assert not mutable, f"{compiled}: mutable image tags {mutable}; run `stgt pipeline compile`"


def test_the_pinned_tags_are_this_trees_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STGT_IMAGE_CPU", raising=False)
    monkeypatch.delenv("STGT_IMAGE_CUDA", raising=False)
    assert images_in(Path(COMPILED)) == {images.cpu_image(), images.cuda_image()}
    assert images_in(index_pipeline.COMPILED) == {images.cpu_image()}


def test_the_pattern_refuses_mutable_tags() -> None:
    for mutable in ("ghcr.io/stgt-pipeline/stgt-cpu:latest", "ghcr.io/stgt-pipeline/stgt-cpu:0.1.0",
                    "python:3.11", "ghcr.io/stgt-pipeline/stgt-cpu"):
        assert not PINNED.fullmatch(mutable), mutable


def make_tree(root: Path) -> Path:
    for rel, text in {"infra/docker/Dockerfile.cpu": "FROM python\n", "requirements/lock.txt": "numpy==2\n",
                      "pyproject.toml": "[project]\n", "stgt_model/model.py": "A = 1\n",
                      "components/prepare/stage.py": "B = 1\n", "pipelines/stgt_pipeline.yaml": "tag: x\n",
                      "README.md": "docs\n", "tests/test_x.py": "C = 1\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("changed, moves", [
    ("stgt_model/model.py", True), ("components/prepare/stage.py", True), ("requirements/lock.txt", True),
    ("infra/docker/Dockerfile.cpu", True),
    ("pipelines/stgt_pipeline.yaml", False), ("README.md", False), ("tests/test_x.py", False),
])
def test_the_tag_moves_with_what_the_image_holds_and_only_that(tmp_path: Path, changed: str, moves: bool) -> None:
    before = make_tree(tmp_path / "a")
    after = tmp_path / "b"
    shutil.copytree(before, after)
    (after / changed).write_text((after / changed).read_text() + "# changed\n")
    digest = images.context_digest.__wrapped__  # uncached: two trees
    assert (digest("cpu", before) != digest("cpu", after)) is moves
    assert re.fullmatch(r"[0-9a-f]{12}", digest("cpu", before))


def test_stage_tasks_retry_and_the_trainjob_launcher_does_not() -> None:
    spec, _ = load(Path(COMPILED))
    tasks = all_tasks(spec)
    for name in ("prepare", "validate", "extract-frames", "build-graphs", "evaluate", "register", "open-mlflow-run",
                 "finish-run"):
        matches = [t for n, t in tasks.items() if n == name or n.startswith(f"{name}-")]
        assert matches, f"no task {name!r} in {sorted(tasks)}"
        for task in matches:
            assert task.get("retryPolicy", {}).get("maxRetryCount") == task_config.TRANSIENT_RETRIES, name
    launchers = [t for n, t in tasks.items() if "launch" in n or "trainjob" in n]
    assert launchers and all("retryPolicy" not in t for t in launchers)
