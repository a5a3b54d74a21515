"""Benchmark the STGT graph attention: dense reference vs block-sparse (vs flex_attention on CUDA).

Each measurement is one graph construction + GraphAttention forward + backward (what the STGT block runs),
over T frames of N patch tokens. Reports the median wall time of --reps runs after one warm-up, and the peak
memory of one run above what was allocated before it:
  cuda: torch.cuda.max_memory_allocated;
  cpu:  peak of live tensor bytes in the torch profiler's memory timeline (allocator-independent, unlike RSS).

    python bench/graph_attention.py            # T=8, N in 32..512 (T*N = 256..4096), ~1-2 min on 2 CPU cores
    python bench/graph_attention.py --quick    # N in 32..128
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from stgt_model.graph import build_block_graph, build_graph  # noqa: E402
from stgt_model.graph_attention import GraphAttention, flex_attention_available  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "graph_attention.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8, help="T, frames per clip")
    parser.add_argument("--tokens-per-frame", type=int, nargs="+", default=[32, 64, 128, 256, 512], help="N values")
    parser.add_argument("--width", type=int, default=128, help="model width D")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=0.5, help="graph similarity threshold")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--impls", nargs="+", default=["dense", "block_sparse", "flex"], help="flex: CUDA only")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="N in 32, 64, 128 and 2 reps")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args()
    if args.quick:
        args.tokens_per_frame, args.reps = [32, 64, 128], 2
    return args


def forward_backward(module: GraphAttention, x: torch.Tensor, impl: str, frames: int, threshold: float) -> None:
    graph = build_graph(x, frames, threshold) if impl == "dense" else build_block_graph(x, frames, threshold)
    module(x, graph, use_flex=impl == "flex").sum().backward()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(run, device: torch.device) -> int | None:
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action  # private API: the only CPU peak-tensor-memory source

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        run()
    live = peak = 0
    for _, action, (key, _), size in prof._memory_profile().timeline:
        if key.device.type != "cpu":
            continue
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def measure(args: argparse.Namespace, impl: str, tokens_per_frame: int) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    module = GraphAttention(args.width, args.heads, dropout=0.0).to(device).eval()
    x = torch.randn(args.batch, args.frames * tokens_per_frame, args.width, device=device, requires_grad=True)

    def run() -> None:
        forward_backward(module, x, impl, args.frames, args.threshold)

    if device.type == "cuda":
        run()  # warm-up and flex compilation, outside the measurements
    peak = peak_memory_bytes(run, device)  # on CPU this run is also the warm-up
    times = []
    for _ in range(args.reps):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {
        "impl": impl,
        "frames": args.frames,
        "tokens_per_frame": tokens_per_frame,
        "nodes": args.frames * tokens_per_frame,
        "median_ms": 1000 * statistics.median(times),
        "peak_mib": None if peak is None else peak / 2**20,
    }


def machine_info(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "memory_method": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "torch.profiler memory timeline, peak live tensor bytes",
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    impls = [i for i in args.impls if i != "flex" or (device.type == "cuda" and flex_attention_available())]
    results = []
    print(f"{'impl':<13}{'T':>3}{'N':>6}{'T*N':>7}{'median ms':>12}{'peak MiB':>11}")
    for n in args.tokens_per_frame:
        for impl in impls:
            row = measure(args, impl, n)
            results.append(row)
            print(
                f"{impl:<13}{row['frames']:>3}{n:>6}{row['nodes']:>7}{row['median_ms']:>12.1f}{row['peak_mib']:>11.1f}"
            )
    config = {k: v for k, v in vars(args).items() if k != "output"}
    report = {"machine": machine_info(device), "config": config, "results": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
