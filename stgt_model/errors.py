"""Errors the library raises for problems the user fixes in the configuration (not bugs). The pipeline's CLI turns
them into one readable line instead of a traceback."""


class ConfigurationError(ValueError):
    pass
