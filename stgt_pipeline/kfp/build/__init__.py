"""The compile side of the Kubeflow code: pipeline parameters, generated components, task settings.
Never imported inside a pod."""
