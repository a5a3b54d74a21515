"""The `build_graphs` stage: `stage.run(params, inputs, outputs)` and its Kubeflow component."""
