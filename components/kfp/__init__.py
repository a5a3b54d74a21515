"""Kubeflow Pipelines for stgt: every registry stage as a component on the project's own image.

Modules, one concern each:
  images            the container images components run on
  params            params.yaml keys as typed pipeline parameters (`section__key`)
  codegen           lightweight components from generated source (one signature per registry stage)
  artifacts         how each stage output travels: typed artifact, or the run's workspace volume
  stage_task        what runs inside a stage's pod: paths, params file, run_stage (or torchrun), published artifacts
  stage_components  the generated components: stage, shard, collect, TrainJob launcher, publish
  fanout            sharding a stage over its manifest: plan, split, merge
  task_config       per-task Kubernetes settings: resources, GPUs, /dev/shm, secrets, run id, caching
  parent_run        the MLflow parent run: the first task opens it, stage tasks join it, the exit task closes it
  distributed       a training stage in its pod or as a TrainJob, branched on its node count
  trainjob          multi-node training as a Kubeflow Trainer TrainJob
  local_run         the whole pipeline through kfp.local
  submit            compile-and-submit to a Kubeflow Pipelines endpoint
  cli               the `stgt pipeline ...` commands
"""
