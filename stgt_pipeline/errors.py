"""User-facing errors: the CLI prints them as one readable line instead of a traceback."""


class StgtError(Exception):
    """A mistake the user can fix (bad config, bad input file). Message names the file, key or field."""


class ConfigError(StgtError):
    """params.yaml or a --set override is invalid."""


class StageFailed(StgtError):
    """A stage ran but its gate failed (e.g. a data-quality suite, too many unreadable videos)."""
