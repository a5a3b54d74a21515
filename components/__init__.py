"""Pipeline stages of stgt-pipeline: one module per stage, the stage registry, config and the `stgt` CLI."""
