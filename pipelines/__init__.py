"""The stgt Kubeflow pipeline (installed as `stgt_pipeline.pipelines`): `stgt_pipeline.py` builds it from the stage
table, `stgt_pipeline.yaml` is its compiled, checked-in form; `local_run`, `submit` and `cli` are the
`stgt pipeline compile / run-local / submit` commands."""
