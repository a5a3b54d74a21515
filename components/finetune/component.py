"""`finetune` as Kubeflow components: one task per task in finetune.tasks (stage table: foreach).

Generated from the stage table and params.yaml by stgt_pipeline.kfp.build (see StageComponent for using them alone).
"""
from stgt_pipeline.kfp.build.stage_tasks import StageComponent

component = StageComponent("finetune")
