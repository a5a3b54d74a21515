"""MLflow: stage and parent runs (`runs`), the model registry's champion/challenger gate (`model_registry`), and
the `stgt runs / ui / registry` commands (`cli`)."""
