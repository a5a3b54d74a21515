"""The images every component runs on: the project's own, built from requirements/lock.txt (infra/docker).

Tags are fixed (the package version) so that compiling the pipeline is deterministic; point a compile at your
own registry with STGT_IMAGE_CPU / STGT_IMAGE_CUDA.
"""
from __future__ import annotations

import os
from importlib.metadata import version

REPOSITORY = "ghcr.io/stgt-pipeline"


def _tag() -> str:
    return version("stgt-pipeline")


def cpu_image() -> str:
    return os.environ.get("STGT_IMAGE_CPU") or f"{REPOSITORY}/stgt-cpu:{_tag()}"


def cuda_image() -> str:
    return os.environ.get("STGT_IMAGE_CUDA") or f"{REPOSITORY}/stgt-cuda:{_tag()}"


def image_for(gpus: int) -> str:
    return cuda_image() if gpus > 0 else cpu_image()
