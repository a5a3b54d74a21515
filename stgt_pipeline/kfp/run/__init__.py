"""The pod side of the Kubeflow code: what a task runs. Imports nothing from `stgt_pipeline.kfp.build`."""
