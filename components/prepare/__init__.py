"""The `prepare` stage: `stage.run(params, inputs, outputs)` and its Kubeflow component."""
