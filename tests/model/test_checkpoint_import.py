import os
import sys
import types

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from stgt_model.checkpoint_import import CheckpointImportError, import_checkpoint, main, read_official_checkpoint
from stgt_model.config import preset_config
from stgt_model.factory import create_model

TINY = preset_config("tiny")


def official_key(ours: str) -> str:
    """Our key -> the official LAVIS name (reference §6.3), written independently of the importer's mapping."""
    if not ours.startswith("qformer."):
        return ours
    key = ours.removeprefix("qformer.")
    if key.startswith("embeddings."):
        return "Qformer.bert." + key
    if key.startswith("bert.layernorm."):
        return "Qformer.bert.embeddings.LayerNorm." + key.removeprefix("bert.layernorm.")
    if key.startswith("lm_head."):
        return "Qformer.cls.predictions." + key.removeprefix("lm_head.")
    key = key.replace(".attention.attention.", ".attention.self.").replace(
        ".crossattention.attention.", ".crossattention.self."
    )
    return "Qformer." + key


def official_state_dict(model) -> dict:
    """As LAVIS saves it: trainable parameters plus buffers, no frozen ViT, no frozen pos_2D_embed (§6.3)."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    state = {official_key(k): v for k, v in model.state_dict().items() if k in trainable}
    word = state["Qformer.bert.embeddings.word_embeddings.weight"]
    state["Qformer.cls.predictions.decoder.weight"] = word  # tied, saved under both names
    state["Qformer.cls.predictions.decoder.bias"] = state["Qformer.cls.predictions.bias"]
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(512).expand(1, -1)
    return state


class LinearWarmupCosineLRScheduler:
    def __init__(self, optimizer, max_epoch):
        self.optimizer = optimizer
        self.max_epoch = max_epoch


def save_with_fake_lavis(obj, path, **kwargs):
    """torch.save while a fake `lavis.common.optims` module exists, as in a LAVIS run; removed afterwards."""
    module = types.ModuleType("lavis.common.optims")
    LinearWarmupCosineLRScheduler.__module__ = module.__name__
    module.LinearWarmupCosineLRScheduler = LinearWarmupCosineLRScheduler
    fake = {
        "lavis": types.ModuleType("lavis"),
        "lavis.common": types.ModuleType("lavis.common"),
        module.__name__: module,
    }
    sys.modules.update(fake)
    try:
        torch.save(obj, path, **kwargs)
    finally:
        for name in fake:
            del sys.modules[name]
        LinearWarmupCosineLRScheduler.__module__ = __name__


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(0)
    return create_model(TINY).eval()


def write_official_checkpoint(model, path, **save_kwargs):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), weight_decay=0.05)
    params[0].grad = torch.zeros_like(params[0])
    optimizer.step()  # some optimizer state, as in a real run
    checkpoint = {
        "model": official_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "config": {"run": {"init_lr": 2.5e-5, "max_epoch": 9}, "model": {"sim_th": 0.5}},
        "scaler": {"scale": np.float64(65536.0), "growth_tracker": np.arange(3)},  # numpy values load too
        "epoch": 4,
        "lr_scheduler": LinearWarmupCosineLRScheduler(optimizer, max_epoch=9),
    }
    save_with_fake_lavis(checkpoint, path, **save_kwargs)
    assert "lavis.common.optims" not in sys.modules


def test_synthetic_checkpoint_uses_the_official_names(source_model):
    keys = set(official_state_dict(source_model))
    for key in (
        "Qformer.bert.embeddings.word_embeddings.weight",
        "Qformer.bert.embeddings.LayerNorm.weight",
        "Qformer.bert.encoder.layer.0.attention.self.query.weight",
        "Qformer.bert.encoder.layer.0.crossattention.self.key.weight",
        "Qformer.bert.encoder.layer.1.output_query.LayerNorm.bias",
        "Qformer.cls.predictions.transform.dense.weight",
        "graph_cross_model.resblocks.0.message_attn.mlp.c_fc.weight",
        "graph_cross_model.resblocks.0.graphattn.W_O.bias",
        "graph_cross_model.resblocks.0.attn.out_proj.weight",
        "graph_cross_model.ln_post.weight",
    ):
        assert key in keys, key


@pytest.mark.parametrize("legacy", [False, True])
def test_import_maps_every_trainable_key(tmp_path, source_model, legacy):
    src, dst = tmp_path / "checkpoint_best.pth", tmp_path / "imported.safetensors"
    write_official_checkpoint(source_model, src, _use_new_zipfile_serialization=not legacy)
    report = import_checkpoint(src, dst, model_config=TINY)

    assert report.missing == [] and report.unexpected == []
    assert "graph_cross_model.pos_2D_embed" in report.expected_missing
    assert any(key.startswith("backbone.") for key in report.expected_missing)
    assert set(report.skipped) == {
        "Qformer.cls.predictions.decoder.weight",
        "Qformer.cls.predictions.decoder.bias",
        "Qformer.bert.embeddings.position_ids",
    }
    with safe_open(str(dst), "pt") as imported:
        assert '"max_epoch": 9' in imported.metadata()["official_config"]

    torch.manual_seed(123)  # a differently initialised model: every imported tensor must overwrite it
    target = create_model(TINY).eval()
    result = target.load_state_dict(load_file(str(dst)), strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(report.expected_missing)
    trainable = [name for name, p in source_model.named_parameters() if p.requires_grad]
    source_state, target_state = source_model.state_dict(), target.state_dict()
    assert all(torch.equal(source_state[name], target_state[name]) for name in trainable)

    features = torch.randn(2, TINY.stgt.num_frames, 17, TINY.backbone.tiny_vit.width)
    ids = torch.randint(1000, 2000, (2, 6))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = source_model.itm_scores(source_model.video_tokens(features=features), ids, mask)
        actual = target.itm_scores(target.video_tokens(features=features), ids, mask)
    assert torch.allclose(expected, actual)


def test_shape_mismatch_is_a_readable_error(tmp_path, source_model):
    src = tmp_path / "ckpt.pth"
    write_official_checkpoint(source_model, src)
    with pytest.raises(CheckpointImportError, match="do not fit the model config"):
        import_checkpoint(src, tmp_path / "out.safetensors", model_config=preset_config("tiny", {"embed_dim": 16}))


class RunsShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


class EvaluatesCode:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval"])
def test_code_in_the_pickle_is_refused_and_never_runs(tmp_path, capsys, payload):
    marker = tmp_path / "pwned"
    evil = RunsShellCommand(marker) if payload == "os.system" else EvaluatesCode()
    src = tmp_path / "evil.pth"
    torch.save({"model": {"temp": torch.tensor(0.07)}, "config": evil}, src)

    with pytest.raises(CheckpointImportError, match="refused to load .*(system|eval)"):
        read_official_checkpoint(src)
    assert main([str(src), str(tmp_path / "out.safetensors"), "--preset", "tiny"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_unreadable_file_is_one_line(tmp_path, capsys):
    src = tmp_path / "garbage.pth"
    src.write_bytes(b"this is not a checkpoint")
    assert main([str(src), str(tmp_path / "out.safetensors")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unreadable" in err
    assert main([str(tmp_path / "absent.pth"), str(tmp_path / "out.safetensors")]) != 0
    assert "no such file" in capsys.readouterr().err


def test_cli_summary_and_help(tmp_path, capsys, source_model):
    src, dst = tmp_path / "ckpt.pth", tmp_path / "out.safetensors"
    write_official_checkpoint(source_model, src)
    assert main([str(src), str(dst), "--preset", "tiny"]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "missing 0" in out and dst.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0


def test_a_file_that_maps_no_tensor_is_refused_and_nothing_is_written(tmp_path, capsys):
    src, dst = tmp_path / "unrelated.pth", tmp_path / "out.safetensors"
    torch.save({"model": {"encoder.weight": torch.ones(3, 3), "head.bias": torch.zeros(3)}}, src)
    n_expected = len([k for k in create_model(TINY, device="meta").state_dict()
                      if not k.startswith(("backbone.", "graph_cross_model.pos_2D_embed"))])

    with pytest.raises(CheckpointImportError, match=f"maps none of the {n_expected} tensors the model expects "
                                                    r"\(2 unexpected keys, e.g. encoder.weight, head.bias\)"):
        import_checkpoint(src, dst, model_config=TINY, min_share=0.0)  # no share lets nothing through
    assert main([str(src), str(dst), "--preset", "tiny"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"maps none of the {n_expected} tensors" in err[0]
    assert not dst.exists()


def test_a_partial_import_needs_a_lower_min_share(tmp_path, capsys, source_model):
    # Only the graph module: a real share of the model, far from all of it.
    state = {k: v for k, v in official_state_dict(source_model).items() if k.startswith("graph_cross_model.")}
    src, dst = tmp_path / "graph_only.pth", tmp_path / "out.safetensors"
    torch.save({"model": state}, src)
    expected = create_model(TINY, device="meta").state_dict()
    importable = {k: v.numel() for k, v in expected.items()
                  if not k.startswith(("backbone.", "graph_cross_model.pos_2D_embed"))}
    share = sum(importable[k] for k in state) / sum(importable.values())
    assert 0.0 < share < 0.5

    assert main([str(src), str(dst), "--preset", "tiny"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"maps {len(state)} of the {len(importable)} tensors the model expects, {share:.1%} of their weights, " \
           "below the 50% required" in err[0] and "--min-share" in err[0]
    assert not dst.exists()

    assert main([str(src), str(dst), "--preset", "tiny", "--min-share", f"{share / 2:.4f}"]) == 0
    assert load_file(str(dst)).keys() == state.keys()
    assert f"({share:.1%} of the weights it should provide)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(src), str(dst), "--preset", "tiny", "--min-share", "1.5"])
    assert "--min-share: 1.5 is not a share between 0 and 1" in capsys.readouterr().err


def test_min_share_is_documented_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--min-share FRACTION" in capsys.readouterr().out
