"""What per-step training metrics to MLflow cost: the real pretrain stage (tiny model, tiny synthetic corpus, every
step logged by default: log_every=1, the worst case) with tracking off and on, alternated, on the same features.

Reported, as bench/results/tracking_overhead_log_every_<N>.json:
- wall: the training time of both phases (TrainResult.seconds, the stage's `stage1.seconds` + `stage2.seconds`) per
  step, median over the trials of each mode, and its ratio on/off (noisy on a shared machine: read it with the
  spread);
- hook: the time the training loop itself spent handing metrics to the tracker (Tracker.log_step_metrics, which
  batches, and its flushes: log_batch requests), as a share of that training time. This is what tracking adds to a
  step, measured in the same run, so machine load does not blur it.

    python bench/tracking_overhead.py                          # embedded SQLite store in a temp folder
    python bench/tracking_overhead.py --log-every 10           # as params.yaml logs
    python bench/tracking_overhead.py --tracking-uri http://127.0.0.1:5000 --steps 100 --trials 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import yaml  # noqa: E402

from stgt_pipeline import stages  # noqa: E402
from stgt_pipeline.params import load_params  # noqa: E402
from stgt_pipeline.runner import run_stage  # noqa: E402
from stgt_pipeline.tracking import runs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def write_params(root: Path, steps: int, log_every: int) -> Path:
    train = {"steps": steps, "batch_size": 4, "checkpoint_every": steps, "log_every": log_every, "threads": 1}
    raw = {"prepare": {"num_videos": 16, "frames_per_video": 8, "width": 48, "height": 48, "test_share": 0.25,
                       "val_share": 0.0},
           "extract_frames": {"num_frames": 4, "size": 32, "workers": 1},
           "build_graphs": {"batch_size": 8, "device": "cpu"},
           "model": {"preset": "tiny"},
           "pretrain": {"stage1": {**train, "losses": ["vtc", "vtm"]}, "stage2": {**train, "losses": ["csal", "vtm"]}}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


class HookClock:
    """Time spent in the tracker's step-metric calls (the hook the training loop calls, and its flushes)."""

    def __init__(self) -> None:
        self.seconds, self.calls, self.flushes = 0.0, 0, 0
        self._log, self._flush = runs.MlflowTracker.log_step_metrics, runs.MlflowTracker.flush

    def __enter__(self) -> HookClock:
        clock = self

        def log_step_metrics(tracker: runs.MlflowTracker, metrics: Any, step: int) -> None:
            started = time.perf_counter()
            try:
                clock._log(tracker, metrics, step)
            finally:
                clock.seconds += time.perf_counter() - started
                clock.calls += 1

        def flush(tracker: runs.MlflowTracker) -> None:
            clock.flushes += 1
            clock._flush(tracker)  # inside log_step_metrics (counted there) or at the stage's end (not training)

        runs.MlflowTracker.log_step_metrics, runs.MlflowTracker.flush = log_step_metrics, flush
        return self

    def __exit__(self, *exc: object) -> None:
        runs.MlflowTracker.log_step_metrics, runs.MlflowTracker.flush = self._log, self._flush


def trial(root: Path, params: Path, inputs: dict[str, Path], index: int, tracking: bool) -> dict[str, float]:
    os.environ["STGT_TRACKING"] = "on" if tracking else "off"
    with HookClock() as clock:
        summary = run_stage("pretrain", params_path=params, inputs=inputs,
                            outputs={"checkpoint": root / f"pretrain-{index}"}, metrics_path=root / f"m-{index}.json")
    steps = summary["stage1"]["steps"] + summary["stage2"]["steps"]
    seconds = summary["stage1"]["seconds"] + summary["stage2"]["seconds"]
    return {"tracking": tracking, "steps": steps, "train_seconds": seconds, "s_per_step": seconds / steps,
            "hook_seconds": clock.seconds, "hook_calls": clock.calls, "flushes": clock.flushes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per phase (two phases)")
    parser.add_argument("--trials", type=int, default=3, help="runs per mode, alternated")
    parser.add_argument("--log-every", type=int, default=1, help="steps between logged steps (1: the worst case; "
                        "params.yaml's phases log every 10)")
    parser.add_argument("--tracking-uri", default=None, help="default: an SQLite store in the work folder")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    root = args.work or Path(tempfile.mkdtemp(prefix="stgt-tracking-overhead-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "tracking-overhead")
    params = write_params(root, args.steps, args.log_every)

    # The data stages' own functions, untracked (no validation gate: the synthetic corpus is valid).
    data = {"dataset": root / "prepared", "frames": root / "frames", "features": root / "features"}
    loaded = load_params(params)
    stages.get("prepare").load().run(loaded, {}, {"dataset": data["dataset"]})
    stages.get("extract_frames").load().run(loaded, {"dataset": data["dataset"]}, {"frames": data["frames"]})
    stages.get("build_graphs").load().run(loaded, {"frames": data["frames"], "dataset": data["dataset"]},
                                          {"features": data["features"]})
    inputs = {"dataset": data["dataset"], "features": data["features"]}

    trial(root, params, inputs, -1, False)  # warm-up: imports, allocator, caches
    trials = [trial(root, params, inputs, i, tracking=i % 2 == 1) for i in range(2 * args.trials)]
    off = [t["s_per_step"] for t in trials if not t["tracking"]]
    on = [t for t in trials if t["tracking"]]
    hook_share = [t["hook_seconds"] / t["train_seconds"] for t in on]
    result = {
        "what": f"pretrain stage, tiny preset, 2 phases, log_every={args.log_every}, tracking off vs on",
        "log_every": args.log_every,
        "tracking_uri": runs.redact(os.environ["MLFLOW_TRACKING_URI"]) if args.tracking_uri else "sqlite (temp)",
        "steps_per_trial": trials[0]["steps"],
        "flush_every_s": runs.STEP_METRICS_FLUSH_S,
        "median_s_per_step_off": statistics.median(off),
        "median_s_per_step_on": statistics.median(t["s_per_step"] for t in on),
        "wall_ratio_on_over_off": statistics.median(t["s_per_step"] for t in on) / statistics.median(off),
        "hook_share_of_train_time": {"median": statistics.median(hook_share), "max": max(hook_share)},
        "trials": trials,
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "python": platform.python_version()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"tracking_overhead_log_every_{args.log_every}.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "trials"}, indent=1))


if __name__ == "__main__":
    main()
