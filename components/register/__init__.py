"""The `register` stage: `stage.run(params, inputs, outputs)` and its Kubeflow component."""
