"""Kubeflow Pipelines for stgt: every registry stage as a component on the project's own image.

Modules, one concern each:
  images            the container images components run on
  params            params.yaml keys as typed pipeline parameters (`section__key`)
  codegen           lightweight components from generated source (one signature per registry stage)
  artifacts         how each stage output travels: typed artifact, or the run's workspace volume
  stage_task        what runs inside a stage's pod: paths, params file, run_stage, published artifacts
  stage_components  the generated components: stage, shard and collect
  fanout            sharding a stage over its manifest: plan, split, merge
  task_config       per-task Kubernetes settings: resources, GPUs, /dev/shm, secrets, caching
  exit_handler      the task that closes the MLflow parent run when the pipeline ends
  trainjob          multi-node training as a Kubeflow Trainer TrainJob
  local_run         the whole pipeline through kfp.local
  submit            compile-and-submit to a Kubeflow Pipelines endpoint
  cli               the `stgt pipeline ...` commands
"""
