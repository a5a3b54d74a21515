"""A tiny training run for tests/model/test_engine.py, in a separate process: under torchrun (DDP) or plain python
(to be SIGKILLed part-way). The test module imports the model, data and loss from here, so both sides match.

    python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_train_script.py OUT_DIR CONFIG_JSON
    python ddp_train_script.py OUT_DIR CONFIG_JSON --dropout 0.1 --noisy-collate --sleep 0.2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset, default_collate

from stgt_model.engine import TrainConfig, train


class TinyNet(nn.Module):
    """Linear + LayerNorm + Linear with biases, a 0-D temperature, a frozen layer and a buffer that training changes;
    nothing depends on the batch as a whole (no BatchNorm), so gradient accumulation is exact."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.frozen = nn.Linear(6, 6).requires_grad_(False)
        self.fc1 = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(16, 3)
        self.temp = nn.Parameter(torch.tensor(0.5))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        h = self.drop(torch.relu(self.norm(self.fc1(self.frozen(x)))))
        return self.fc2(h) / self.temp


def make_model(dropout: float = 0.0) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(dropout)


def make_dataset(n: int = 48) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def loss_fn(model: nn.Module, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    x, y = batch
    ce = F.cross_entropy(model(x), y)
    return {"total": ce, "ce": ce}


def noisy_collate(samples: list) -> list[torch.Tensor]:
    """Draws from the Python and numpy RNGs, so that resuming must restore them too."""
    x, y = default_collate(samples)
    return [x + 0.01 * float(np.random.randn()) + 0.01 * random.random(), y]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("config_json")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--noisy-collate", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per step, to give a killer time")
    args = parser.parse_args()

    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    # Record which rank made each torch.save to a file (the test checks that only rank 0 writes); in-memory saves
    # are torch.distributed pickling objects for all_gather_object.
    real_save = torch.save

    def recording_save(obj: object, f: object, *a: object, **kw: object) -> None:
        if not isinstance(f, io.BytesIO):
            with open(args.out_dir / "writers.txt", "a") as log:
                log.write(f"{rank}\n")
        return real_save(obj, f, *a, **kw)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.save = recording_save
    result = train(
        make_model(args.dropout), loss_fn, make_dataset(), TrainConfig.model_validate_json(args.config_json),
        args.out_dir, log=lambda step, metrics: time.sleep(args.sleep),
        collate_fn=noisy_collate if args.noisy_collate else None,
    )
    (args.out_dir / f"result-rank{rank}.json").write_text(json.dumps({"step": result.step, "losses": result.losses}))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
