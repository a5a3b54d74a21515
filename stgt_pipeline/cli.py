"""The `stgt` command line: one sub-command per pipeline stage plus project tools.

User mistakes (bad params, missing inputs, malformed files) print one readable line and exit 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from stgt_pipeline import stages
from stgt_pipeline.errors import StgtError
from stgt_pipeline.params import DEFAULT_PARAMS, check_params_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def _add_stage_parser(sub: argparse._SubParsersAction, stage: stages.Stage) -> None:
    p = sub.add_parser(stage.name, help=stage.help, description=stage.help)
    p.add_argument("--params", default=str(DEFAULT_PARAMS), metavar="FILE",
                   help="params file; one named here must exist (default: %(default)s, built-in defaults if absent)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param by its dotted key, e.g. --set prepare.num_videos=40 (repeatable)",
    )
    for key, default in stage.inputs.items():
        p.add_argument(f"--{key.replace('_', '-')}", dest=f"in_{key}", default=default, metavar="PATH",
                       help=f"input '{key}' (default: %(default)s)")
    for key, default in stage.outputs.items():
        p.add_argument(f"--{key.replace('_', '-')}", dest=f"out_{key}", default=default, metavar="PATH",
                       help=f"output '{key}' (default: %(default)s)")
    p.add_argument("--metrics", default=stage.metrics, metavar="FILE", help="JSON summary of the run (default: %(default)s)")
    if stage.resumable:
        p.add_argument("--restart", action="store_true",
                       help="delete the unfinished run's checkpoints (<output>.work/) and start over instead of "
                            f"resuming; under dvc: STGT_RESTART=1 dvc repro {stage.name}")
    p.set_defaults(func=_run_stage_command, stage=stage)


def _run_stage_command(args: argparse.Namespace) -> int:
    from stgt_pipeline.runner import run_stage

    stage: stages.Stage = args.stage
    with _restart_env(getattr(args, "restart", False)):
        summary = run_stage(
            stage.name,
            params_path=args.params,
            overrides=args.overrides,
            inputs={k: getattr(args, f"in_{k}") for k in stage.inputs},
            outputs={k: getattr(args, f"out_{k}") for k in stage.outputs},
            metrics_path=args.metrics,
        )
    outs = ", ".join(str(getattr(args, f"out_{k}")) for k in stage.outputs)
    print(f"{stage.name}: done in {summary['seconds']:.1f}s -> {outs} (summary: {args.metrics})")
    return 0


@contextlib.contextmanager
def _restart_env(restart: bool) -> Iterator[None]:
    """--restart is STGT_RESTART=1 for this command (the form dvc users set), put back after it."""
    if not restart:
        yield
        return
    from stgt_pipeline.training import RESTART_ENV  # torch: only when a training stage runs

    before = os.environ.get(RESTART_ENV)
    os.environ[RESTART_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[RESTART_ENV]
        else:
            os.environ[RESTART_ENV] = before


def _dvc_yaml_command(args: argparse.Namespace) -> int:
    from stgt_pipeline import dvc_yaml

    path = Path(args.output)
    if args.check:
        if not dvc_yaml.is_current(path):
            raise StgtError(f"{path} is out of date with the stage table (stgt_pipeline/stages.py): "
                            "run `stgt dvc-yaml`")
        print(f"{path} is current")
        return 0
    dvc_yaml.write(path)
    print(f"wrote {path}")
    return 0


def _outputs_command(args: argparse.Namespace) -> int:
    import json

    for stage in stages.STAGES:
        found = [Path(p) for p in stage.summaries() if Path(p).exists()]
        seconds = [json.loads(p.read_text()).get("seconds") for p in found]
        state = (f"done in {' + '.join(f'{s}s' for s in seconds if s is not None) or '?'}" if found else "not run")
        print(f"{stage.name:<16} {state}")
        for key, path in stage.outputs.items():
            print(f"  {key:<14} {path}{'' if Path(path).exists() else '  (missing)'}")
        for path in found:
            print(f"  {'summary':<14} {path}")
    return 0


def _check_params_option(args: argparse.Namespace) -> None:
    """Before a command runs: a --params file the user named must exist (a typo would otherwise run the built-in
    defaults and replace outputs). The default params.yaml may be absent: the built-in defaults, said out loud, so
    that a command run in the wrong folder shows it."""
    given = getattr(args, "params", None)
    if given is None:
        return
    if Path(given) == DEFAULT_PARAMS and not DEFAULT_PARAMS.exists():
        print(f"note: no {DEFAULT_PARAMS} in {Path.cwd()}: using the built-in defaults (stgt_pipeline/params.py)",
              file=sys.stderr)
        return
    check_params_file(given)


def build_parser(stages_only: bool = False) -> argparse.ArgumentParser:
    """The `stgt` parser; `stages_only`: the stage commands alone, for a stage's command line (what dvc runs), which
    then does not import what the other command groups need to build their parsers (pandas, for one: a second)."""
    parser = argparse.ArgumentParser(
        prog="stgt",
        description="stgt-pipeline: train, evaluate and ship STGT video-language models. "
        "Each stage reads params.yaml; `dvc repro` runs them in order.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for stage in stages.STAGES:
        _add_stage_parser(sub, stage)
    if stages_only:
        return parser

    p = sub.add_parser("dvc-yaml", help="write dvc.yaml from the stage table (or --check that it is current)",
                       description="Render dvc.yaml from the stage table (stgt_pipeline/stages.py).")
    p.add_argument("--check", action="store_true", help="exit non-zero when the file differs from the stage table")
    p.add_argument("--output", default="dvc.yaml", metavar="FILE", help="file to write or check (default: %(default)s)")
    p.set_defaults(func=_dvc_yaml_command)

    # Listed here for `stgt --help`; main() hands the arguments to stgt_model.checkpoint_import, which owns them.
    about = ("convert an official STGT/LAVIS checkpoint to safetensors (no code from the file is run); "
             "see `stgt import-checkpoint --help`")
    sub.add_parser("import-checkpoint", help=about, description=about, add_help=False)

    p = sub.add_parser("outputs", help="list every stage's outputs and whether it has run",
                       description="Where each stage writes, and the summary of its last run.")
    p.set_defaults(func=_outputs_command)

    from stgt_pipeline.pipelines.cli import add_pipeline_commands  # kfp loads only when a command runs
    add_pipeline_commands(sub)
    from stgt_pipeline.tracking.cli import add_tracking_commands  # mlflow loads only when a command runs
    add_tracking_commands(sub)
    from stgt_pipeline.search.cli import add_search_commands  # mlflow, faiss, torch load only when a command runs
    add_search_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["import-checkpoint"]:
        from stgt_model import checkpoint_import

        return checkpoint_import.main(argv[1:])
    parser = build_parser(stages_only=bool(argv) and argv[0] in stages.BY_NAME)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        _check_params_option(args)
        return args.func(args)
    except StgtError as exc:
        lines = str(exc).splitlines() or ["error"]
        print(f"error: {lines[0]}", file=sys.stderr)
        for line in lines[1:]:
            print(f"       {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from stgt_pipeline.tracking import runs

        if not runs.is_tracking_failure(exc):  # a bug: its traceback is what to read
            raise
        print(f"error: {runs.tracking_error(exc, runs.tracking_uri())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
