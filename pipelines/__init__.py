"""The stgt Kubeflow pipeline (stgt_pipeline.py) and its compiled, checked-in form (stgt_pipeline.yaml)."""
