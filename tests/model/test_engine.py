"""The training engine (stgt_model/engine.py): optimizer groups, LR schedule, gradient accumulation, checkpoints,
exact resume (after an exception and after SIGKILL) and DDP over two CPU processes (gloo)."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from stgt_model.engine import CheckpointMismatch, TrainConfig, cosine_schedule, init_distributed, param_groups, train
from stgt_model.errors import ConfigurationError

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SCRIPT = HERE / "ddp_train_script.py"

# The model, data and loss live in the subprocess script; load it as a module so both sides share them.
_spec = importlib.util.spec_from_file_location("ddp_train_script", SCRIPT)
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-exact comparisons need the same thread count here and in the subprocesses (which use 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(**overrides) -> TrainConfig:
    base = dict(steps=6, batch_size=8, lr=1e-2, min_lr=1e-3, log_every=1, checkpoint_every=2, deterministic=True)
    return TrainConfig(**(base | overrides))


def run(out_dir: Path, cfg: TrainConfig, dropout: float = 0.0, noisy: bool = False, log=None):
    model = tiny.make_model(dropout)
    collate = tiny.noisy_collate if noisy else None
    result = train(model, tiny.loss_fn, tiny.make_dataset(), cfg, out_dir, log=log, collate_fn=collate)
    return model, result


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def checkpoint_names(out_dir: Path) -> list[str]:
    return sorted(p.name for p in (out_dir / "checkpoints").iterdir())


# --- config, optimizer groups, schedule, distributed set-up -----------------------------------------------------


def test_config_rejects_unknown_keys_and_needs_one_length():
    with pytest.raises(ValidationError):
        TrainConfig(steps=1, learning_rate=1.0)
    with pytest.raises(ValidationError, match="exactly one"):
        TrainConfig(steps=1, epochs=1)
    with pytest.raises(ValidationError, match="exactly one"):
        TrainConfig()


def test_param_groups_exempt_1d_and_bias_decay_0d_and_skip_frozen():
    model = tiny.TinyNet()
    model.proj = nn.Module()
    model.proj.bias = nn.Parameter(torch.zeros(2, 2))  # 2-D, but named .bias: exempt

    groups = param_groups(model, 0.05)
    assert [(g["weight_decay"], sorted(g["param_names"])) for g in groups] == [
        (0.05, ["fc1.weight", "fc2.weight", "temp"]),  # official: the 0-D temp is decayed
        (0.0, ["fc1.bias", "fc2.bias", "norm.bias", "norm.weight", "proj.bias"]),
    ]  # frozen.weight / frozen.bias: not trainable, in no group
    by_name = dict(model.named_parameters())
    assert all(p is by_name[n] for g in groups for n, p in zip(g["param_names"], g["params"]))

    groups = param_groups(model, 0.05, decay_zero_dim=False)
    assert sorted(groups[0]["param_names"]) == ["fc1.weight", "fc2.weight"]
    assert "temp" in groups[1]["param_names"]


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 1.0),
        (25, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),  # 0.868198
        (50, 0.55),  # half-way: the mean of lr and min_lr
        (99, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.99))),
        (100, 0.1),
    ],
)
def test_cosine_schedule_without_warmup(step, expected):
    assert cosine_schedule(step, 100, lr=1.0, min_lr=0.1) == pytest.approx(expected)


@pytest.mark.parametrize("step, expected", [(0, 0.2), (5, 0.6), (10, 1.0), (60, 0.55), (110, 0.1)])
def test_cosine_schedule_with_warmup(step, expected):
    # 10 warmup steps from 0.2 to 1.0, then the cosine over the remaining 100 steps
    assert cosine_schedule(step, 110, lr=1.0, min_lr=0.1, warmup=10, warmup_lr=0.2) == pytest.approx(expected)


def test_init_distributed_without_torchrun_is_single_process(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert init_distributed() == (0, 1, 0)


# --- training ---------------------------------------------------------------------------------------------------


def test_grad_accumulation_matches_the_full_batch(tmp_path):
    # 10 steps of 8 samples from 48: crosses an epoch boundary (6 steps per epoch) in both runs. A large eps makes
    # the update depend on the gradient's scale (Adam is otherwise invariant to it), so 1/grad_accum is checked too.
    full, _ = run(tmp_path / "full", config(steps=10, batch_size=8, grad_accum=1, eps=1.0))
    accum, _ = run(tmp_path / "accum", config(steps=10, batch_size=4, grad_accum=2, eps=1.0))
    for (name, a), b in zip(full.state_dict().items(), accum.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert full.seen == accum.seen == 80


def test_epochs_count_whole_steps_and_drop_the_rest(tmp_path):
    # 48 samples, 5 x 2 per step: 4 steps per epoch (8 samples left over each epoch).
    model, result = run(tmp_path, config(steps=None, epochs=2, batch_size=5, grad_accum=2))
    assert result.step == 8
    assert model.seen == 8 * 10
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["data"] == {"epoch": 2, "step_in_epoch": 0}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_and_clipping_run_on_cpu(tmp_path, amp):
    logged = []
    cfg = config(steps=3, amp=amp, grad_clip=0.5)
    _, result = run(tmp_path, cfg, log=lambda step, metrics: logged.append(metrics))
    assert math.isfinite(result.losses["total"])
    assert all(m["grad_norm"] > 0 for m in logged)  # clipping reports the norm before clipping
    scaler = torch.load(result.checkpoint, weights_only=True)["scaler"]
    assert bool(scaler) == (amp == "fp16")  # only fp16 needs (and saves) loss scaling


def test_log_hook_gets_each_loss_lr_grad_norm_and_throughput_without_changing_training(tmp_path):
    logged = []
    model, _ = run(tmp_path / "logged", config(steps=7, log_every=3), log=lambda s, m: logged.append((s, m)))
    assert [s for s, _ in logged] == [3, 6, 7]  # every log_every steps and the last
    for _, metrics in logged:
        assert metrics.keys() == {"loss/total", "loss/ce", "lr", "grad_norm", "samples_per_s", "steps_per_s"}
        assert metrics["grad_norm"] > 0  # reported without clipping too
        assert metrics["samples_per_s"] == pytest.approx(8 * metrics["steps_per_s"])  # batch 8, one rank
    quiet, _ = run(tmp_path / "quiet", config(steps=7, log_every=100))
    assert_same_weights(model, quiet)  # measuring the norm on logged steps leaves the trajectory as it was


def test_checkpoint_contents_pruning_and_finished_rerun(tmp_path):
    logged = []
    cfg = config(steps=6, checkpoint_every=2, keep_last=2)
    model, result = run(tmp_path, cfg, log=lambda step, metrics: logged.append((step, metrics)))

    # every 2 steps, the newest 2 kept, `latest` names the last
    assert checkpoint_names(tmp_path) == ["latest", "step-0000004.pt", "step-0000006.pt"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-0000006.pt"
    assert result.step == 6 and result.checkpoint == tmp_path / "checkpoints" / "step-0000006.pt"

    ckpt = torch.load(result.checkpoint, weights_only=True)  # plain tensors and containers only
    assert ckpt.keys() == {"step", "data", "model", "optimizer", "scaler", "rng", "losses", "config"}
    assert ckpt["step"] == 6
    assert ckpt["data"] == {"epoch": 1, "step_in_epoch": 0}  # 48 samples / 8 = 6 steps per epoch
    # trainable parameters and buffers, no frozen weights, no "module." prefix
    assert sorted(ckpt["model"]) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight", "norm.bias",
                                     "norm.weight", "seen", "temp"]
    for k, v in ckpt["model"].items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert [sorted(g["param_names"]) for g in ckpt["optimizer"]["param_groups"]] == [
        ["fc1.weight", "fc2.weight", "temp"], ["fc1.bias", "fc2.bias", "norm.bias", "norm.weight"]]
    assert len(ckpt["optimizer"]["state"]) == 7
    assert len(ckpt["rng"]) == 1 and ckpt["rng"][0].keys() >= {"python", "numpy", "torch"}
    assert ckpt["config"] == cfg.model_dump(mode="json")
    assert ckpt["losses"] == result.losses and result.losses.keys() == {"total", "ce"}

    # the schedule is stepped per iteration; every step logged (log_every=1), with the loss averaged over ranks
    assert [s for s, _ in logged] == [1, 2, 3, 4, 5, 6]
    assert [m["lr"] for _, m in logged] == pytest.approx([cosine_schedule(s, 6, 1e-2, 1e-3) for s in range(6)])
    assert logged[-1][1]["loss/total"] == pytest.approx(result.losses["total"])

    # A re-run of a finished run loads the final state and returns at once, writing nothing.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()}
    again_logged = []
    again, again_result = run(tmp_path, cfg, log=lambda *a: again_logged.append(a))
    assert (again_result.step, again_result.losses, again_result.checkpoint) == (6, result.losses, result.checkpoint)
    assert again_logged == []
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()} == before
    assert_same_weights(again, model)

    # The same out_dir with other hyper-parameters is a different run: refuse to resume it, saying what differs.
    with pytest.raises(CheckpointMismatch) as mismatch:
        run(tmp_path, config(steps=6, checkpoint_every=2, lr=5e-3))
    assert mismatch.value.detail == "lr: 0.01 -> 0.005"
    assert str(mismatch.value).startswith(f"{tmp_path / 'checkpoints'} holds a run with other settings (lr: 0.01 ")


def test_failed_write_leaves_no_partial_checkpoint_and_resume_cleans_leftovers(tmp_path, monkeypatch):
    real_save = torch.save

    def disk_full_at_step_4(obj, f, *args, **kwargs):
        if obj["step"] == 4:
            f.write(b"half a checkpoint")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_4)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, config(steps=6, checkpoint_every=2))
    assert checkpoint_names(tmp_path) == ["latest", "step-0000002.pt"]  # no step-4, no .tmp
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-0000002.pt"
    monkeypatch.undo()

    # What a SIGKILL at the wrong moment leaves: a temp file, and a checkpoint `latest` never moved to.
    (tmp_path / "checkpoints" / "step-0000005.pt.tmp").write_bytes(b"partial")
    (tmp_path / "checkpoints" / "step-0000005.pt").write_bytes(b"orphan")  # kept, it would outrank step 4
    _, result = run(tmp_path, config(steps=6, checkpoint_every=2))
    assert result.step == 6
    assert checkpoint_names(tmp_path) == ["latest", "step-0000004.pt", "step-0000006.pt"]


def test_damaged_latest_checkpoint_falls_back_to_the_one_before_naming_the_bad_file(tmp_path, caplog):
    cfg = config(steps=10, checkpoint_every=2, keep_last=3)
    reference, _ = run(tmp_path / "reference", cfg, dropout=0.2, noisy=True)

    def interrupt_at_step_7(step, metrics):
        if step == 7:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(out, cfg, dropout=0.2, noisy=True, log=interrupt_at_step_7)
    damaged = out / "checkpoints" / "step-0000006.pt"
    assert (out / "checkpoints" / "latest").read_text() == damaged.name
    damaged.write_bytes(damaged.read_bytes()[:1000])  # truncated, as by a full disk or a copy cut short

    with caplog.at_level("WARNING", logger="stgt_model.engine"):
        resumed, result = run(out, cfg, dropout=0.2, noisy=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings[0].startswith(f"checkpoint {damaged} is damaged (RuntimeError: ")
    assert warnings[1] == "resuming from step-0000004.pt instead of the damaged step-0000006.pt"
    assert result.step == 10
    assert_same_weights(resumed, reference)  # resumed exactly from step 4
    assert checkpoint_names(out) == ["latest", "step-0000006.pt", "step-0000008.pt", "step-0000010.pt"]


def test_no_readable_checkpoint_is_an_error_naming_the_files(tmp_path):
    run(tmp_path, config(steps=4, checkpoint_every=2))
    for path in (tmp_path / "checkpoints").glob("step-*.pt"):
        path.write_bytes(b"")
    with pytest.raises(ConfigurationError, match=r"no readable checkpoint in .*checkpoints "
                                                 r"\(step-0000004.pt, step-0000002.pt\): delete it to start over"):
        run(tmp_path, config(steps=4, checkpoint_every=2))


def test_resume_after_an_interrupt_is_bit_identical(tmp_path):
    # dropout and a collate that draws from python/numpy: all three RNGs must be restored, not just the weights
    cfg = config(steps=10, checkpoint_every=4)
    reference, _ = run(tmp_path / "reference", cfg, dropout=0.2, noisy=True)

    def interrupt_at_step_7(step, metrics):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", cfg, dropout=0.2, noisy=True, log=interrupt_at_step_7)
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text() == "step-0000004.pt"  # mid-epoch 0

    torch.manual_seed(123), random.seed(123), np.random.seed(123)  # the checkpoint's RNG states must win
    resumed, result = run(tmp_path / "resumed", cfg, dropout=0.2, noisy=True)
    assert result.step == 10
    assert_same_weights(resumed, reference)


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    out = tmp_path / "killed"
    cfg = config(steps=12, checkpoint_every=3)
    stderr = tmp_path / "stderr.txt"
    cmd = [sys.executable, str(SCRIPT), str(out), cfg.model_dump_json(), "--dropout", "0.2", "--noisy-collate",
           "--sleep", "0.25"]
    with open(stderr, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        latest = out / "checkpoints" / "latest"
        deadline = time.monotonic() + 60
        while not latest.exists():
            assert proc.poll() is None, stderr.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert latest.read_text() != "step-0000012.pt"  # killed part-way, not after finishing

    resumed, result = run(out, cfg, dropout=0.2, noisy=True)
    reference, _ = run(tmp_path / "reference", cfg, dropout=0.2, noisy=True)
    assert result.step == 12
    assert_same_weights(resumed, reference)


def test_ddp_on_two_processes_matches_one_process_with_the_same_global_batch(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
           str(out), config(steps=5, batch_size=4).model_dump_json()]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    single, result = run(tmp_path / "single", config(steps=5, batch_size=8))
    ckpt = torch.load(out / "checkpoints" / "step-0000005.pt", weights_only=True)
    assert ckpt["model"].pop("seen") == 5 * 4  # a buffer is per rank: rank 0 counted its own samples only
    for name, value in ckpt["model"].items():
        torch.testing.assert_close(value, single.state_dict()[name], rtol=1e-5, atol=1e-7, msg=name)

    # Only rank 0 wrote (checkpoints at steps 2, 4, 5), holding both ranks' RNG states; both ranks saw the same
    # all-reduced losses, which match the single process's.
    assert (out / "writers.txt").read_text().split() == ["0", "0", "0"]
    assert checkpoint_names(out) == ["latest", "step-0000004.pt", "step-0000005.pt"]
    assert len(ckpt["rng"]) == 2
    ranks = [json.loads((out / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] and ranks[0]["step"] == 5
    assert ranks[0]["losses"] == pytest.approx(result.losses, rel=1e-5)
