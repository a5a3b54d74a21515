"""Shared test set-up: offline, quiet tools, hermetic temp dirs, paths to the shared real media."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
REAL_MEDIA = SHARED / "real-media"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Stage tests run without MLflow; tests/tracking turns it on against a real server.
os.environ.setdefault("STGT_TRACKING", "off")


@pytest.fixture
def real_media() -> Path:
    if not REAL_MEDIA.is_dir():
        pytest.skip(f"real media not found at {REAL_MEDIA} (it lies beside the checkout as ../shared/real-media)")
    return REAL_MEDIA
