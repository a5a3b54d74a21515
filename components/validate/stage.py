"""Stage `validate`: the Great Expectations gate on the prepared manifest.

Writes reports/validate/{report.html,result.json}; a failing suite fails the stage with a readable summary
(the report is still written, next to where the output would be, so the user can open it).

Per-video failures (a missing file, a duration out of range, a caption too short) can be quarantined instead of
failing the whole dataset: when every failed expectation names single videos, those are no more than
`validate.max_failed_share` of the manifest (default 0: any failure fails) and the rest passes the whole suite
again, the stage passes. result.json then lists each quarantined video with its reasons (`quarantined`), the
report has a table of them, and extract_frames does not decode them (they appear in its quarantine.json with the
reason "validate: ..."), so every video is still either extracted or quarantined with a reason.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from stgt_pipeline.errors import StageFailed, StgtError
from stgt_pipeline.io.atomic import atomic_dir, failed_dir, keep_evidence, write_json
from stgt_pipeline.io.manifest import Manifest, read_manifest
from stgt_pipeline.io.remote import RemoteError, list_files
from stgt_pipeline.params import Params, write_resolved
from stgt_pipeline.quality.gx import SuiteResult, render_html, validate_dataframe

SUITE = Path(__file__).with_name("suite.json")  # the manifest suite (GX expectations)
REASONS_SHOWN = 5


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
    title = f"Manifest validation ({manifest.source}, {len(checks)} videos)"
    with atomic_dir(report_dir) as tmp:
        result = validate_dataframe(checks, SUITE, suite_params, html_path=tmp / "report.html", title=title)
        quarantine, rest = set_aside(checks, result, cfg.max_failed_share)
        if rest is not None:  # what is left after setting the failing videos aside must pass the whole suite
            rest = validate_dataframe(checks[~checks["video_id"].isin({q["video_id"] for q in quarantine})],
                                      SUITE, suite_params)
        passed = result.success or bool(rest is not None and rest.success)
        verdict = result.as_dict() | {"success": passed, "quarantined": quarantine if passed else []}
        if rest is not None:
            verdict["without_quarantined"] = rest.as_dict()
        (tmp / "report.html").write_text(render_html(result, title, quarantine, passed), encoding="utf-8")
        write_json(tmp / "result.json", verdict)
        write_resolved(params, ["validate"], tmp / "config.resolved.yaml")
        if not passed:
            failed = failed_dir(report_dir)  # the evidence, beside the (unchanged) output
            keep_evidence(tmp, failed, ["report.html", "result.json"])
            lines = "\n".join(f"- {s}" for s in (rest.summary if rest is not None else result.summary))
            why = (f"after setting aside {len(quarantine)} video(s) within max_failed_share, the rest still fails"
                   if rest is not None else explain_share(len(quarantine), len(checks), cfg.max_failed_share))
            raise StageFailed(f"validate: manifest suite failed ({why}); report: {failed / 'report.html'}\n{lines}")
    shutil.rmtree(failed_dir(report_dir), ignore_errors=True)
    if quarantine:
        shown = "\n".join(f"  - {q['video_id']} ({q['path']}): {q['reason']}" for q in quarantine[:REASONS_SHOWN])
        more = f"\n  ... {len(quarantine) - REASONS_SHOWN} more" if len(quarantine) > REASONS_SHOWN else ""
        print(f"validate: {len(quarantine)} of {len(checks)} videos quarantined (max_failed_share "
              f"{cfg.max_failed_share:.1%}); list: {report_dir / 'result.json'}\n{shown}{more}", file=sys.stderr)
    return {
        "videos": int(len(checks)),
        "success": passed,
        "quarantined": len(quarantine),
        "expectations": result.statistics.get("evaluated_expectations"),
        "splits": {k: int(v) for k, v in checks["split"].value_counts().sort_index().items()},
    }


def set_aside(checks: pd.DataFrame, result: SuiteResult, max_failed_share: float
              ) -> tuple[list[dict[str, str]], SuiteResult | None]:
    """The videos a failed suite names, each with its reasons ([{video_id, path, reason}], manifest order), and
    whether to re-check the rest: only when every failure is about single videos and there are at most
    `max_failed_share` of them (and not all). A passing suite sets nothing aside."""
    if result.success:
        return [], None
    per_video = result.per_row_failures("video_id")
    if not per_video:
        return [], None
    quarantine = [{"video_id": str(v), "path": str(p), "reason": "; ".join(per_video[str(v)])}
                  for v, p in zip(checks["video_id"], checks["path"]) if str(v) in per_video]
    quarantine = list({q["video_id"]: q for q in quarantine}.values())  # a duplicated id once
    within = len(quarantine) < len(checks) and len(quarantine) / len(checks) <= max_failed_share
    return quarantine, (result if within else None)


def explain_share(bad: int, total: int, max_failed_share: float) -> str:
    if not bad:
        return "an expectation about the whole manifest"
    if bad == total:
        return f"all {total} videos fail"
    return (f"{bad} of {total} videos fail ({bad / total:.1%}), above validate.max_failed_share "
            f"{max_failed_share:.1%}")
