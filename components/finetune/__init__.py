"""The `finetune` stage: `stage.run(params, inputs, outputs)` and its Kubeflow component."""
