"""stgt-pipeline, the platform: the `stgt` CLI, the params schema, the stage table, the runner, tracking, data
sources, quality gates and the Kubeflow build and run sides that the stages (stgt_pipeline.components) share."""
