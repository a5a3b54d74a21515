"""Stage `finetune` on the tiny corpus: one output per task, a task run alone (the dvc.yaml foreach item) leaves
the other alone, and the benchmark presets carry the reference recipe into finetune params."""
import json

import pytest
import torch

from stgt_pipeline import dvc_yaml as dvcgen
from stgt_pipeline import stages, training
from stgt_pipeline.components.finetune import stage as finetune
from stgt_pipeline.params import load_params
from tests.stages.tiny_corpus import corpus, tiny_params, trained  # noqa: F401 - session fixtures

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_finetune_writes_retrieval_and_qa_models(trained):
    for task in ("retrieval", "qa"):
        assert (trained[task] / training.MODEL_FILE).exists()
        assert (trained[task] / training.CURVES_FILE).exists()
        assert not training.work_dir(trained[task]).exists()
    vocab = json.loads((trained["qa"] / training.VOCAB_FILE).read_text())
    state = torch.load(trained["qa"] / training.MODEL_FILE, weights_only=True)
    assert state["qa_head.mlp.2.weight"].shape[0] == len(vocab) <= 20  # answer_vocab_size of the tiny params
    assert "qa_head.mlp.2.weight" not in torch.load(trained["retrieval"] / training.MODEL_FILE, weights_only=True)


def test_a_single_task_run_writes_only_that_task(trained, tmp_path):
    params = tiny_params(tmp_path, finetune={"tasks": ["qa"]})
    outputs = {"retrieval": tmp_path / "retrieval", "qa": tmp_path / "qa"}
    summary = finetune.run(params, {k: trained[k] for k in ("dataset", "features", "pretrained")}, outputs)
    assert list(summary) == ["qa"]
    assert (outputs["qa"] / training.MODEL_FILE).exists() and not outputs["retrieval"].exists()


def test_dvc_yaml_runs_finetune_as_a_foreach_over_tasks():
    entry = dvcgen.stage_entry(stages.get("finetune"))
    assert entry["foreach"] == ["retrieval", "qa"]
    assert entry["do"]["outs"] == ["data/checkpoints/finetune/${item}"]
    assert "--set 'finetune.tasks=[${item}]'" in entry["do"]["cmd"]
    assert "data/checkpoints/pretrain" in entry["do"]["deps"]


@pytest.mark.parametrize("preset,epochs,text_len,batch", [("msrvtt_9k", 9, 36, 20), ("didemo", 9, 55, 20),
                                                          ("lsmdc", 9, 32, 20), ("msvd", 12, 32, 20)])
def test_benchmark_presets_set_the_reference_finetune_recipe(tmp_path, preset, epochs, text_len, batch):
    (tmp_path / "params.yaml").write_text(f"prepare: {{preset: {preset}, benchmark: {{root: {tmp_path}}}}}\n")
    retrieval = load_params(tmp_path / "params.yaml").finetune.retrieval
    assert (retrieval.epochs, retrieval.steps, retrieval.max_text_len, retrieval.batch_size) == (epochs, None, text_len, batch)
    assert (retrieval.lr, retrieval.min_lr, retrieval.warmup_steps) == (2.5e-5, 1e-6, 0)
    assert (retrieval.weight_decay, retrieval.betas, retrieval.amp) == (0.05, (0.9, 0.98), "fp16")
    assert retrieval.losses == ["csal", "vtm"] and not retrieval.pair_twins
