"""Kubeflow Pipelines for stgt: every stage of the stage table as a component on the project's own image.

Two sides that never import each other, and what they agree on:
  conventions          parameter names, how outputs travel (artifact or workspace), workspace paths, run-id env
  build/               compile time only, never imported in a pod
    params             params.yaml keys as typed pipeline parameters (`section__key`)
    codegen            lightweight components from generated source (one signature per stage)
    images             the container images components run on
    components         the generated components: stage, shard plan/shard/collect, TrainJob launcher, publish,
                       MLflow parent run open/finish
    task_config        per-task Kubernetes settings: resources, GPUs, /dev/shm, secrets, run id, caching
    distributed        a training stage in its pod or as a TrainJob, branched on its node count
  run/                 what runs inside a pod
    stage_task         a stage's task: paths, params file, run_stage (or torchrun), published outputs
    shards             a sharded stage: its shard tasks and the collect task that merges them
    parent_run         the MLflow parent run: opened by the first task, joined by stage tasks, closed on exit
    trainjob           multi-node training as a Kubeflow Trainer TrainJob
    artifacts          publishing outputs: metadata, workspace pointers, HTML views, metrics
The pipeline itself, and the `stgt pipeline compile / run-local / submit` commands, are in stgt_pipeline.pipelines.
"""
