"""Standard video-language benchmarks, read from their annotation files as the maintainers and the reference
codebases (CLIP4Clip, LAVIS/STGT, VindLU, VIOLET, collaborative-experts) publish them.

One module per benchmark family: each turns its files into `VideoEntry`s (`read`) and hands them to
`plan.build_plan`, which finds the videos under `prepare.benchmark.root`, reports the missing ones, runs the
benchmark's data-quality suite and writes the data card. Presets in stgt_pipeline/presets select the files.
"""
from __future__ import annotations

# source name -> module with `build(cfg, dataset_dir)`; merged into stgt_pipeline.sources.SOURCES
SOURCES: dict[str, str] = {
    "msrvtt": "stgt_pipeline.sources.benchmarks.msrvtt",
    "msvd": "stgt_pipeline.sources.benchmarks.msvd",
    "didemo": "stgt_pipeline.sources.benchmarks.didemo",
    "lsmdc": "stgt_pipeline.sources.benchmarks.lsmdc",
    "activitynet": "stgt_pipeline.sources.benchmarks.activitynet",
    "webvid": "stgt_pipeline.sources.benchmarks.webvid",
    "msrvtt_qa": "stgt_pipeline.sources.benchmarks.qa",
    "msvd_qa": "stgt_pipeline.sources.benchmarks.qa",
    "activitynet_qa": "stgt_pipeline.sources.benchmarks.qa",
}
