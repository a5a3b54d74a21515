"""Time `dvc repro` of the embedded default end to end, per stage, and keep what it learned.

Clones the project's committed state into a temporary folder (so your data/ and mlflow.db stay untouched), runs
`dvc repro` there with MLflow tracking on (the embedded SQLite store of the copy), and writes
bench/results/pipeline_run.json: wall seconds, each stage's own timer (reports/<stage>.json), the moments each
stage started, and the evaluate metrics. Run it on a quiet machine: other busy processes stretch every number.

    python bench/pipeline_run.py                      # ~15 minutes on 2 CPU cores
    python bench/pipeline_run.py --keep /tmp/run      # keep the copy for inspection
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STGT_TRACKING", "MLFLOW_TRACKING_URI")}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
                "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"), "GX_ANALYTICS_ENABLED": "false",
                "HF_HUB_OFFLINE": "1"})
    return env


def repro(project: Path, env: dict[str, str]) -> tuple[int, float, list[dict[str, Any]]]:
    """Run `dvc repro`, echoing its output; returns (exit code, wall seconds, when each stage started)."""
    started, marks = time.perf_counter(), []
    proc = subprocess.Popen(["dvc", "repro"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        if line.startswith("Running stage"):
            marks.append({"stage": line.split("'")[1], "started_s": round(time.perf_counter() - started, 1)})
    return proc.wait(), time.perf_counter() - started, marks


def collect(project: Path, wall_seconds: float, marks: list[dict[str, Any]]) -> dict[str, Any]:
    reports = project / "reports"
    stage_seconds = {p.relative_to(reports).with_suffix("").as_posix(): json.loads(p.read_text()).get("seconds")
                     for p in sorted(reports.rglob("*.json")) if p.parent == reports or p.parent.name == "finetune"}
    metrics_file = reports / "evaluate" / "metrics.json"
    return {"wall_seconds": round(wall_seconds, 1), "stage_seconds": stage_seconds, "stage_starts": marks,
            "metrics": json.loads(metrics_file.read_text()) if metrics_file.is_file() else None,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="run in this folder and keep it (default: a temporary folder, removed)")
    parser.add_argument("--output", default=str(RESULTS / "pipeline_run.json"))
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="stgt-run-"))
    project = work / "project"
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(project)], check=True)
        code, wall, marks = repro(project, environment(work))
        if code != 0:
            print(f"dvc repro failed with exit code {code}", file=sys.stderr)
            return code
        result = collect(project, wall, marks)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"dvc repro: {result['wall_seconds']} s; stages: {result['stage_seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
