"""Standard video-language benchmarks, read from their annotation files as the maintainers and the reference
codebases (CLIP4Clip, LAVIS/STGT, VindLU, VIOLET, collaborative-experts) publish them.

One module per benchmark family: each turns its files into `VideoEntry`s (`read`) and hands them to
`plan.build_plan`, which finds the videos under `prepare.benchmark.root`, reports the missing ones, runs the
benchmark's data-quality suite and writes the data card. Presets in components/presets select the files.
"""
from __future__ import annotations

# source name -> module with `build(cfg, dataset_dir)`; merged into components.sources.SOURCES
SOURCES: dict[str, str] = {
    "msrvtt": "components.sources.benchmarks.msrvtt",
    "msvd": "components.sources.benchmarks.msvd",
    "didemo": "components.sources.benchmarks.didemo",
    "lsmdc": "components.sources.benchmarks.lsmdc",
    "activitynet": "components.sources.benchmarks.activitynet",
    "webvid": "components.sources.benchmarks.webvid",
    "msrvtt_qa": "components.sources.benchmarks.qa",
    "msvd_qa": "components.sources.benchmarks.qa",
    "activitynet_qa": "components.sources.benchmarks.qa",
}
