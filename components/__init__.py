"""The pipeline stages, one folder each (installed as `stgt_pipeline.components`): `<stage>/stage.py` holds
`run(params, inputs, outputs) -> summary`, `<stage>/component.py` its Kubeflow component; the stage table
(`stgt_pipeline.stages`) says which is which. Stages never import each other: what several share lives in the
platform (`stgt_pipeline.training`, `stgt_pipeline.scoring`) or the library (`stgt_model`)."""
