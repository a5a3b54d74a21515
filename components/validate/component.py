"""`validate` as Kubeflow components: one task.

Generated from the stage table and params.yaml by stgt_pipeline.kfp.build (see StageComponent for using them alone).
"""
from stgt_pipeline.kfp.build.stage_tasks import StageComponent

component = StageComponent("validate")
