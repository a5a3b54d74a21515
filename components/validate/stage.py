"""Stage `validate`: the Great Expectations gate on the prepared manifest.

Writes reports/validate/{report.html,result.json}; a failing suite fails the stage with a readable summary
(the report is still written, next to where the output would be, so the user can open it).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from stgt_pipeline.errors import StageFailed, StgtError
from stgt_pipeline.io.atomic import atomic_dir, failed_dir, keep_evidence, write_json
from stgt_pipeline.io.manifest import Manifest, read_manifest
from stgt_pipeline.io.remote import RemoteError, list_files
from stgt_pipeline.params import Params, write_resolved
from stgt_pipeline.quality.gx import validate_dataframe

SUITE = Path(__file__).with_name("suite.json")  # the manifest suite (GX expectations)


def manifest_checks(manifest: Manifest) -> pd.DataFrame:
    """The manifest plus the derived columns the suite asserts on (one row per video)."""
    df = manifest.table
    captions = df["captions"].map(lambda c: [s for s in (list(c) if c is not None else [])])
    splits_per_content = df.dropna(subset=["sha256"]).groupby("sha256")["split"].nunique()
    return pd.DataFrame({
        "video_id": df["video_id"],
        "path": df["path"],
        "split": df["split"],
        # A QA-only benchmark (MSVD-QA) has questions instead of captions: every video needs some text.
        "num_texts": captions.map(len) + df["qa"].map(lambda q: 0 if q is None else len(q)),
        "shortest_caption_chars": captions.map(lambda c: min((len(s.strip()) for s in c), default=None)),
        "file_exists": files_exist(manifest),
        "splits_sharing_content": df["sha256"].map(splits_per_content).fillna(1).astype(int),
        "duration": df["duration"],
        "fps": df["fps"],
        "width": df["width"],
        "height": df["height"],
    })


def files_exist(manifest: Manifest) -> pd.Series:
    """Whether each row's video is there; under a URL root, from one listing (not a request per video)."""
    paths = manifest.table["path"]
    root = manifest.data_root
    if isinstance(root, str):
        try:
            present = set(list_files(root))
        except RemoteError as exc:
            raise StgtError(f"validate: cannot list the manifest's data root {root} ({exc.reason})") from None
        return paths.isin(present)
    return paths.map(lambda p: (root / p).is_file())


def run(params: Params, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Any]:
    cfg = params.section("validate")
    manifest = read_manifest(inputs["dataset"])
    checks = manifest_checks(manifest)
    suite_params = {
        "required_splits": list(cfg.required_splits),
        "min_caption_chars": cfg.min_caption_chars,
        "duration_min": cfg.duration_s.min, "duration_max": cfg.duration_s.max,
        "fps_min": cfg.fps.min, "fps_max": cfg.fps.max,
        "width_min": cfg.width.min, "width_max": cfg.width.max,
        "height_min": cfg.height.min, "height_max": cfg.height.max,
    }
    report_dir = outputs["report"]
    with atomic_dir(report_dir) as tmp:
        result = validate_dataframe(checks, SUITE, suite_params, html_path=tmp / "report.html",
                                    title=f"Manifest validation ({manifest.source}, {len(checks)} videos)")
        write_json(tmp / "result.json", result.as_dict())
        write_resolved(params, ["validate"], tmp / "config.resolved.yaml")
        if not result.success:
            failed = failed_dir(report_dir)  # the evidence, beside the (unchanged) output
            keep_evidence(tmp, failed, ["report.html", "result.json"])
            lines = "\n".join(f"- {s}" for s in result.summary)
            raise StageFailed(f"validate: manifest suite failed ({len(result.summary)} expectation(s)); "
                              f"report: {failed / 'report.html'}\n{lines}")
    shutil.rmtree(failed_dir(report_dir), ignore_errors=True)
    return {
        "videos": int(len(checks)),
        "success": result.success,
        "expectations": result.statistics.get("evaluated_expectations"),
        "splits": {k: int(v) for k, v in checks["split"].value_counts().sort_index().items()},
    }
