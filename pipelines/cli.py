"""`stgt pipeline ...`: compile, run locally through kfp.local, or submit to Kubeflow Pipelines."""
from __future__ import annotations

import argparse
from pathlib import Path

from stgt_pipeline.errors import StgtError

COMPILED = "pipelines/stgt_pipeline.yaml"


def _add_params_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", metavar="FILE",
                   help="params file whose values become the pipeline parameters' defaults (default: %(default)s)")


def _add_overrides_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="run argument by its params.yaml key, e.g. --set prepare.num_videos=8 (repeatable)")


def _compile(args: argparse.Namespace) -> int:
    """The main pipeline from the stage table and params, and the index pipeline beside it (both pin the images)."""
    from stgt_pipeline.pipelines import index_pipeline
    from stgt_pipeline.pipelines.stgt_pipeline import compile_pipeline

    target = Path(args.output)
    targets = [(target, lambda out: compile_pipeline(out, args.params))]
    if target == Path(COMPILED):  # the checked-in pair; a custom --output writes the main pipeline only
        targets.append((Path(index_pipeline.COMPILED), index_pipeline.compile_pipeline))
    if not args.check:
        for path, compile_to in targets:
            compile_to(path)
            print(f"wrote {path}")
        return 0
    import tempfile

    for path, compile_to in targets:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = compile_to(Path(tmp) / path.name).read_text()
        if not path.exists() or path.read_text() != fresh:
            raise StgtError(f"{path} is out of date with the stage table, {args.params} or the code its image holds: "
                            "run `stgt pipeline compile`")
        print(f"{path} is current")
    return 0


def _images(args: argparse.Namespace) -> int:
    from stgt_pipeline.kfp.build import images

    chosen = [f for f in ("cpu", "cuda") if getattr(args, f)] or ["cpu", "cuda"]
    for flavour in chosen:
        print(images.cpu_image() if flavour == "cpu" else images.cuda_image())
    return 0


def _run_local(args: argparse.Namespace) -> int:
    from stgt_pipeline.pipelines.local_run import run_local

    run_dir = run_local(args.params, args.overrides, args.output_dir, args.shards)
    print(f"pipeline succeeded; artifacts in {run_dir}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from stgt_pipeline.pipelines.submit import submit

    run_id = submit(args.host, args.namespace, args.experiment, args.params, args.overrides, args.run_name,
                    args.wait, args.timeout, enable_caching=False if args.no_cache else None)
    print(f"run {run_id} {'succeeded' if args.wait else 'submitted'} on {args.host}")
    return 0


def add_pipeline_commands(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser(
        "pipeline", help="compile, run locally, or submit the Kubeflow pipeline",
        description="The Kubeflow pipeline built from the stage table: every stage as a component.")
    sub = group.add_subparsers(dest="pipeline_command", metavar="COMMAND", required=True)

    p = sub.add_parser("compile", help="write the compiled pipeline YAML (or --check that it is current)",
                       description="Compile the pipeline to Kubeflow's IR YAML.")
    p.add_argument("--output", default=COMPILED, metavar="FILE", help="YAML file to write (default: %(default)s)")
    _add_params_option(p)
    p.add_argument("--check", action="store_true", help="exit non-zero when the file differs from a fresh compile")
    p.set_defaults(func=_compile)

    p = sub.add_parser("images", help="print the image names the pipeline pins (a tag per build context)",
                       description="The CPU and CUDA images the compiled pipelines run on: <version>-<digest of the "
                                   "image's build context>. Build and push them under these names, e.g. "
                                   "docker build -f infra/docker/Dockerfile.cpu -t \"$(stgt pipeline images --cpu)\" .")
    p.add_argument("--cpu", action="store_true", help="only the CPU image")
    p.add_argument("--cuda", action="store_true", help="only the CUDA image")
    p.set_defaults(func=_images)

    p = sub.add_parser("run-local", help="run the whole pipeline here through kfp.local (no cluster)",
                       description="Run every stage as a Kubeflow component on this machine (kfp.local "
                                   "SubprocessRunner in this environment).")
    _add_params_option(p)
    _add_overrides_option(p)
    p.add_argument("--output-dir", default="local_outputs", metavar="DIR",
                   help="where runs' artifacts are written (default: %(default)s)")
    p.add_argument("--shards", type=int, default=2, metavar="N", help="shards for sharded stages (default: %(default)s)")
    p.set_defaults(func=_run_local)

    p = sub.add_parser("submit", help="submit a run to Kubeflow Pipelines",
                       description="Create a run on a Kubeflow Pipelines endpoint; the token is read from "
                                   "$KF_PIPELINES_TOKEN when the endpoint needs one.")
    p.add_argument("--host", required=True, metavar="URL", help="Kubeflow Pipelines API URL, e.g. http://localhost:8080")
    p.add_argument("--namespace", default=None, metavar="NS", help="Kubeflow profile namespace (multi-user installs)")
    p.add_argument("--experiment", default="stgt", metavar="NAME", help="experiment to file the run under (default: %(default)s)")
    p.add_argument("--run-name", default=None, metavar="NAME", help="name of the run (default: chosen by Kubeflow)")
    p.add_argument("--wait", action="store_true", help="wait for the run to finish and fail unless it succeeded")
    p.add_argument("--no-cache", action="store_true",
                   help="run every task even where Kubeflow holds a cached result for the same inputs and image")
    p.add_argument("--timeout", type=int, default=24 * 3600, metavar="S", help="--wait limit in seconds (default: %(default)s)")
    _add_params_option(p)
    _add_overrides_option(p)
    p.set_defaults(func=_submit)
