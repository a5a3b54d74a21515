"""`extract_frames` as Kubeflow components: one shard task per block of its manifest, then a collect task named as the
stage (stage table: sharding).

Generated from the stage table and params.yaml by stgt_pipeline.kfp.build (see StageComponent for using them alone).
"""
from stgt_pipeline.kfp.build.stage_tasks import StageComponent

component = StageComponent("extract_frames")
