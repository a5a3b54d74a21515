"""The images every component runs on: the project's own, built from requirements/lock.txt (infra/docker).

A tag names what the image holds: `<version>-<digest>`, the digest of the image's build context (its Dockerfile,
the lock, pyproject.toml and every source file the Dockerfile copies). So a change of stage code is a new tag,
the compiled pipeline pins it, and Kubeflow's cache (keyed on the component spec, image included) cannot hand
back outputs of old code after an image rebuild. Compiling stays deterministic: the same tree, the same tags.
Point a compile at your own registry with STGT_IMAGE_CPU / STGT_IMAGE_CUDA (give a pinned tag or an @sha256 digest
there too: `latest` or a bare version would defeat the cache key).

Build and push an image under the tag the pipeline expects: `docker build -f infra/docker/Dockerfile.cpu
-t "$(stgt pipeline images --cpu)" .` (the command prints the image names for this tree).
"""
from __future__ import annotations

import functools
import hashlib
import os
from importlib.metadata import version
from pathlib import Path

from stgt_pipeline.errors import StgtError

REPOSITORY = "ghcr.io/stgt-pipeline"
ROOT = Path(__file__).resolve().parents[3]
DIGEST_CHARS = 12
# What infra/docker/Dockerfile.* copy into the image (their .dockerignore lists the same), minus the compiled
# pipelines: those hold the tag, so they cannot be part of it, and no task reads them.
CONTEXT_FILES = ("requirements/lock.txt", "pyproject.toml")
CONTEXT_FOLDERS = ("stgt_model", "stgt_pipeline", "components", "pipelines")
SOURCE_SUFFIXES = {".py", ".json", ".yaml", ".yml"}
COMPILED = ("pipelines/stgt_pipeline.yaml", "pipelines/index_pipeline.yaml")


def context_files(flavour: str, root: Path = ROOT) -> list[Path]:
    """The files whose content makes the image of `flavour` (cpu | cuda), sorted."""
    dockerfile = root / "infra" / "docker" / f"Dockerfile.{flavour}"
    if not dockerfile.is_file():
        raise StgtError(f"{dockerfile} not found: image tags are computed from a source checkout of the project "
                        "(an editable install, `make setup`), or set STGT_IMAGE_CPU / STGT_IMAGE_CUDA")
    files = [dockerfile, *(root / f for f in CONTEXT_FILES)]
    for folder in CONTEXT_FOLDERS:
        files += [p for p in (root / folder).rglob("*")
                  if p.suffix in SOURCE_SUFFIXES and p.is_file() and "__pycache__" not in p.parts
                  and p.relative_to(root).as_posix() not in COMPILED]
    return sorted(files)


@functools.lru_cache(maxsize=None)
def context_digest(flavour: str, root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    for path in context_files(flavour, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:DIGEST_CHARS]


def tag(flavour: str) -> str:
    return f"{version('stgt-pipeline')}-{context_digest(flavour)}"


def cpu_image() -> str:
    return os.environ.get("STGT_IMAGE_CPU") or f"{REPOSITORY}/stgt-cpu:{tag('cpu')}"


def cuda_image() -> str:
    return os.environ.get("STGT_IMAGE_CUDA") or f"{REPOSITORY}/stgt-cuda:{tag('cuda')}"


def image_for(gpus: int) -> str:
    return cuda_image() if gpus > 0 else cpu_image()
