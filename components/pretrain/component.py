"""`pretrain` as Kubeflow components: in its pod, or across nodes as a Kubeflow Trainer TrainJob (stage table:
multi_node).

Generated from the stage table and params.yaml by stgt_pipeline.kfp.build (see StageComponent for using them alone).
"""
from stgt_pipeline.kfp.build.stage_tasks import StageComponent

component = StageComponent("pretrain")
