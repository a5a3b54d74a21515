"""The training engine: one `train()` call runs (or resumes) a whole training run, single-process or under torchrun.

Read top to bottom: the config, the optimizer pieces (parameter groups, LR schedule), distributed set-up, then
`train()` itself, then the checkpoint and RNG helpers it uses. The recipe follows stgt-reference.md §3.2: AdamW
(0.9, 0.98), weight decay 0.05 except 1-D and `.bias` parameters, cosine LR stepped per iteration, AMP, no clipping.

Resuming is exact: a checkpoint holds the model, optimizer, grad scaler, every rank's RNG states and the position in
the data order, so a run killed part-way and re-run with the same `out_dir` ends with bit-identical weights (under
deterministic CPU settings: `deterministic=True`, the same thread count, `num_workers=0` or a dataset whose
randomness does not live in the workers). The LR schedule is a pure function of the step, so it has no state.

Layout of `out_dir/checkpoints/`: `step-0000400.pt` files (the newest `keep_last`) and `latest`, a text file naming
the newest one. Each file is written to `<name>.tmp`, fsynced, then renamed, so a kill never leaves a partial one;
a file damaged later (a full disk, a copy cut short) is skipped with a warning, and the run resumes from the one
before it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import pickle
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from stgt_model.config import TrainConfig
from stgt_model.errors import ConfigurationError

LossFn = Callable[[nn.Module, Any], Mapping[str, Tensor]]
LogFn = Callable[[int, dict[str, float]], None]


log = logging.getLogger(__name__)


class TooFewSamples(ConfigurationError):
    """The dataset cannot fill one optimizer step: a configuration problem, not a bug."""


class CheckpointMismatch(ConfigurationError):
    """`out_dir` holds an unfinished run with other settings (or another world size): resuming would mix two runs."""

    def __init__(self, ckpt_dir: Path, detail: str) -> None:
        super().__init__(f"{ckpt_dir} holds a run with other settings ({detail}): resume it with the same settings, "
                         "or delete it (or train into another out_dir) to start over")
        self.ckpt_dir = ckpt_dir
        self.detail = detail


# Fields a resumed run may change: they do not alter the training trajectory.
_RESUME_MAY_CHANGE = {"checkpoint_every", "keep_last", "log_every", "num_workers", "deterministic", "threads"}


@dataclass(frozen=True)
class TrainResult:
    step: int  # optimizer steps done in total
    losses: dict[str, float]  # mean of each loss over the last logging window, averaged over ranks
    checkpoint: Path  # the final checkpoint
    seconds: float  # wall time of this call (near 0 when the run had already finished)


def param_groups(model: nn.Module, weight_decay: float, decay_zero_dim: bool = True) -> list[dict[str, Any]]:
    """AdamW groups: no decay for 1-D parameters and names ending in `.bias`; frozen parameters are left out.

    0-D parameters (the contrastive `temp`) are decayed like matrices unless `decay_zero_dim` is False: the official
    rule only tests for 1-D, so it decays them, and we replicate that by default.
    """
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim == 1 or name.endswith(".bias") or (p.ndim == 0 and not decay_zero_dim)
        (no_decay if exempt else decay)[name] = p
    groups = [(decay, weight_decay), (no_decay, 0.0)]
    return [{"params": list(g.values()), "param_names": list(g), "weight_decay": wd} for g, wd in groups if g]


def cosine_schedule(step: int, total: int, lr: float, min_lr: float, warmup: int = 0, warmup_lr: float = 0.0) -> float:
    """The learning rate for optimizer step `step` (0-based) of `total`.

    Linear from `warmup_lr` to `lr` over the first `warmup` steps, then a half cosine from `lr` to `min_lr` over the
    rest. LAVIS's linear_warmup_cosine_lr runs its cosine over all steps, warmup included; the two agree when there
    is no warmup (the official recipe), and this one has no jump where warmup ends.
    """
    if step < warmup:
        return warmup_lr + (lr - warmup_lr) * step / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def init_distributed() -> tuple[int, int, int]:
    """Join the process group torchrun describes in the environment; returns (rank, world_size, local_rank).

    A plain `python` process (no WORLD_SIZE, or 1) stays single-process: (0, 1, 0). Idempotent.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    local_rank = int(os.environ["LOCAL_RANK"])
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)  # before NCCL starts, so each rank talks from its own GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", init_method="env://")
    return dist.get_rank(), dist.get_world_size(), local_rank


def train(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Dataset,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    log: LogFn | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> TrainResult:
    """Train `model` in place, resuming from `out_dir/checkpoints/latest` if there is one.

    `loss_fn(model, batch)` returns a dict of scalar losses with key "total", the one that is minimised; it must
    call the model it is given (under DDP that is the wrapper, whose forward synchronises gradients). `dataset` is
    map-style (it needs a length). Under torchrun every rank calls `train()` with the same arguments; only rank 0
    writes checkpoints, calls `log(step, metrics)` and shows the progress bar. The process group is left open.

    `log` is the hook through which a caller records curves (the pipeline fills it with a file and its experiment
    tracker; this library imports no tracker): it is called every `cfg.log_every` steps and at the last step,
    after that step's checkpoint, with `loss/<name>` (each loss term and `loss/total`, averaged over the steps since
    the previous call and over ranks), `lr`, `grad_norm` (the global gradient norm of the logged step, before any
    clipping), `samples_per_s` and `steps_per_s` (over the same window, all ranks together).
    """
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    with _deterministic_algorithms(cfg.deterministic):
        return _train(model, loss_fn, dataset, cfg, Path(out_dir), log, collate_fn)


def _train(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Dataset,
    cfg: TrainConfig,
    out_dir: Path,
    log: LogFn | None,
    collate_fn: Callable[[list[Any]], Any] | None,
) -> TrainResult:
    started = time.perf_counter()
    rank, world, local_rank = init_distributed()
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    amp_dtype = _amp_dtype(cfg.amp, device)
    ckpt_dir = out_dir / "checkpoints"

    # Model, optimizer and scaler exist before any checkpoint is read, so that loading can fill them in.
    model.to(device).train()
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, cfg.decay_zero_dim), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # bf16 needs no loss scaling

    # Data order: one shuffle per epoch from (seed, epoch), shared by all ranks, each taking every world-th sample.
    sampler = _ResumableSampler(dataset, world, rank, cfg.seed)
    steps_per_epoch = len(sampler) // (cfg.batch_size * cfg.grad_accum)
    if steps_per_epoch == 0:
        raise TooFewSamples(
            f"{len(dataset)} training samples make no full step of batch {cfg.batch_size} x accumulation "
            f"{cfg.grad_accum} x {world} rank(s): lower the batch size or prepare more videos"
        )
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch

    def batches_from(epoch: int, step_in_epoch: int) -> Iterator[Any]:
        sampler.set_position(epoch, step_in_epoch * cfg.grad_accum * cfg.batch_size)
        # Its own generator: otherwise DataLoader draws the workers' base seed from the global RNG, which would
        # shift the model's random stream (dropout) in a resumed run relative to an uninterrupted one.
        seed = int(np.random.SeedSequence([cfg.seed, rank, epoch]).generate_state(1)[0])
        loader = DataLoader(
            dataset, cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_fn,
            pin_memory=device.type == "cuda", drop_last=True, generator=torch.Generator().manual_seed(seed),
        )
        return iter(loader)

    # Resume from the latest readable checkpoint, or start fresh.
    step, epoch, step_in_epoch, losses = 0, 0, 0, {}
    latest, ckpt = _latest_checkpoint(ckpt_dir, warn=rank == 0)
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(ckpt_dir, latest)
    if latest is None:
        _seed_everything(cfg.seed + rank)
    else:
        _check_resumable(ckpt, cfg, world, ckpt_dir)
        _load_model_state(model, ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"][rank])
        step, losses = ckpt["step"], ckpt["losses"]
        epoch, step_in_epoch = ckpt["data"]["epoch"], ckpt["data"]["step_in_epoch"]
        if step >= total:
            return TrainResult(step, losses, latest, time.perf_counter() - started)

    ddp_model = model
    if world > 1:
        ddp_model = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    window: dict[str, Tensor] = {}  # summed per-step losses since the last log, kept on device (no sync per step)
    window_steps, window_started, grad_norm = 0, time.perf_counter(), None
    checkpoint = latest
    batches = None
    with tqdm(total=total, initial=step, disable=rank != 0, desc="train", dynamic_ncols=True) as bar:
        while step < total:
            if batches is None:
                batches = batches_from(epoch, step_in_epoch)
            lr = cosine_schedule(step, total, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.warmup_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr

            # Forward/backward over grad_accum micro-batches; DDP all-reduces gradients on the last one only.
            for micro in range(cfg.grad_accum):
                batch = _to_device(next(batches), device)
                sync = world == 1 or micro == cfg.grad_accum - 1
                with contextlib.nullcontext() if sync else ddp_model.no_sync():
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        micro_losses = loss_fn(ddp_model, batch)
                    scaler.scale(micro_losses["total"] / cfg.grad_accum).backward()
                for name, value in micro_losses.items():
                    window[name] = window.get(name, 0.0) + value.detach().float() / cfg.grad_accum

            logging_step = (step + 1) % cfg.log_every == 0 or step + 1 == total
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            elif logging_step:  # the norm of the step that is logged: one pass over the gradients per log, not per step
                scaler.unscale_(optimizer)  # the true gradients' norm (scaler.step would unscale them the same way)
                grad_norm = nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            step, step_in_epoch, window_steps = step + 1, step_in_epoch + 1, window_steps + 1
            if step_in_epoch == steps_per_epoch:  # epoch done; leftover micro-batches (< one step's worth) are dropped
                epoch, step_in_epoch, batches = epoch + 1, 0, None
            bar.update(1)

            metrics: dict[str, float] = {}
            if logging_step:
                losses = _mean_over_ranks(window, window_steps, world)
                seconds = time.perf_counter() - window_started
                metrics = {f"loss/{k}": v for k, v in losses.items()}
                metrics |= {"lr": lr, "samples_per_s": window_steps * cfg.batch_size * cfg.grad_accum * world / seconds,
                            "steps_per_s": window_steps / seconds}
                if grad_norm is not None:
                    metrics["grad_norm"] = grad_norm.item()
                bar.set_postfix(loss=f"{losses['total']:.4f}", lr=f"{lr:.2e}")
                window, window_steps, window_started = {}, 0, time.perf_counter()

            if step % cfg.checkpoint_every == 0 or step == total:
                rng = _gather(_rng_state(), world)  # a collective: every rank takes part, rank 0 writes
                if rank == 0:
                    state = {
                        "step": step,
                        "data": {"epoch": epoch, "step_in_epoch": step_in_epoch},
                        "model": _trainable_state_dict(model),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "rng": rng,
                        "losses": losses,
                        "config": cfg.model_dump(mode="json"),
                    }
                    checkpoint = _save_checkpoint(ckpt_dir, state, cfg.keep_last)
                else:
                    checkpoint = _checkpoint_path(ckpt_dir, step)

            # After the checkpoint, so a callback that fails (or interrupts) loses no finished work.
            if metrics and log is not None and rank == 0:
                log(step, metrics)

    if world > 1:
        dist.barrier()  # every rank returns only once rank 0's final checkpoint is on disk
    return TrainResult(step, losses, checkpoint, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------------------------
# Helpers used by train(), in the order it uses them.


@contextlib.contextmanager
def _deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Deterministic kernels inside train() only: the flags are process-global, so put them back afterwards."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic matmuls
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


class _ResumableSampler(DistributedSampler):
    """A DistributedSampler that can start part-way through an epoch, so a resumed run skips the samples the
    interrupted run consumed without loading them. drop_last: every rank sees the same number of distinct samples."""

    def __init__(self, dataset: Dataset, world: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


def _checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step-{step:07d}.pt"


_CHECKPOINT_NAME = re.compile(r"step-\d+\.pt")
# What torch.load raises for a truncated or overwritten file: EOFError (empty), RuntimeError (a zip without its
# central directory), OSError (cut inside a record, or missing), UnpicklingError (a corrupt pickle).
_UNREADABLE = (EOFError, RuntimeError, OSError, pickle.UnpicklingError)


def _latest_checkpoint(ckpt_dir: Path, warn: bool = True) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest readable checkpoint and its contents: the one `latest` names, else the newest before it.

    `latest` only ever names a complete file (see _save_checkpoint), but a file can be damaged afterwards; resuming
    from the one before costs a few steps, while stopping would cost the whole run. (None, None): nothing to resume.
    """
    pointer = ckpt_dir / "latest"
    if not pointer.exists():
        return None, None
    named = pointer.read_text().strip()
    older = sorted((p for p in ckpt_dir.glob("step-*.pt") if p.name < named), reverse=True)  # zero-padded steps
    candidates = [ckpt_dir / named, *older] if _CHECKPOINT_NAME.fullmatch(named) else older
    damaged = []
    for path in candidates:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except _UNREADABLE as exc:
            damaged.append(path)
            if warn:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "empty"
                log.warning("checkpoint %s is damaged (%s: %s): trying the one before it", path,
                            type(exc).__name__, reason[:120])
            continue
        if damaged and warn:
            log.warning("resuming from %s instead of the damaged %s", path.name, ", ".join(p.name for p in damaged))
        return path, ckpt
    names = ", ".join(p.name for p in damaged) or f"`latest` names {named!r}"
    raise ConfigurationError(f"no readable checkpoint in {ckpt_dir} ({names}): delete it to start over")


def _remove_leftovers(ckpt_dir: Path, latest: Path | None) -> None:
    """Delete what a killed run can leave behind: temp files, and checkpoints newer than `latest` (killed between
    writing the file and moving the pointer), which pruning would otherwise rank above the live one."""
    for path in ckpt_dir.glob("*.tmp"):
        path.unlink()
    for path in ckpt_dir.glob("step-*.pt"):
        if latest is None or path.name > latest.name:
            path.unlink()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def _check_resumable(ckpt: Mapping[str, Any], cfg: TrainConfig, world: int, ckpt_dir: Path) -> None:
    """Refuse to resume into a different run: same out_dir but other hyper-parameters or world size."""
    saved, now = ckpt["config"], cfg.model_dump(mode="json")
    changed = sorted(k for k in now if k not in _RESUME_MAY_CHANGE and saved.get(k) != now[k])
    if changed:
        raise CheckpointMismatch(ckpt_dir, ", ".join(f"{k}: {_short(saved.get(k))} -> {_short(now[k])}"
                                                     for k in changed))
    if len(ckpt["rng"]) != world:  # per-rank RNG states and data shards only map onto the same world size
        raise CheckpointMismatch(ckpt_dir, f"written by {len(ckpt['rng'])} processes, this run has {world}")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _trainable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Trainable parameters and buffers, as the official checkpoints keep them (reference §6.3): frozen weights
    (the vision backbone) come from the model's constructor and would only bloat every checkpoint."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def _load_model_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    if unexpected or set(missing) - frozen:
        raise RuntimeError(f"checkpoint does not fit the model: missing {sorted(set(missing) - frozen)}, "
                           f"unexpected {sorted(unexpected)}")


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),  # a list, so torch.load(weights_only=True) reads it
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _mean_over_ranks(window: Mapping[str, Tensor], steps: int, world: int) -> dict[str, float]:
    names = sorted(window)  # the same order on every rank
    values = torch.stack([window[k] for k in names]) / steps
    if world > 1:
        dist.all_reduce(values)  # SUM: gloo has no AVG
        values /= world
    return dict(zip(names, values.tolist()))


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _save_checkpoint(ckpt_dir: Path, state: Mapping[str, Any], keep_last: int) -> Path:
    """Write the checkpoint, then move `latest` to it, then prune: a kill between any two leaves a valid `latest`."""
    path = _checkpoint_path(ckpt_dir, state["step"])
    _atomic_write(path, lambda f: torch.save(state, f))
    _atomic_write(ckpt_dir / "latest", lambda f: f.write(path.name.encode()))
    for old in sorted(ckpt_dir.glob("step-*.pt"))[:-keep_last]:  # zero-padded names sort by step
        old.unlink()
    return path


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data reaches the disk before the rename makes it visible
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
