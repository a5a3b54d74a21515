"""The `extract_frames` stage: `stage.run(params, inputs, outputs)` and its Kubeflow component."""
