"""The one exception type for problems a user can cause and fix."""


class ConvaError(Exception):
    """A user-caused error (bad file, wrong model, unknown value, ...).

    The CLI prints its message on one line and exits non-zero, without a traceback.
    """
