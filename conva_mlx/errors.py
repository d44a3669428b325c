"""The one exception type for problems a user can cause and fix."""


class ConvaError(Exception):
    """A user-caused error (bad file, wrong model, unknown value, ...).

    The CLI prints its message on one line and exits non-zero, without a traceback.
    """


class ConvaWarning(UserWarning):
    """Something a user should know that does not stop the work (the CLI prints it once)."""


def warn(message: str) -> None:
    import warnings

    warnings.warn(message, ConvaWarning, stacklevel=3)
