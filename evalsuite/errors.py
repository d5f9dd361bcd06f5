"""The one exception type for bad user input: the CLI prints its message on one line and exits 2."""


class UsageError(ValueError):
    """Input the user can fix; the message says what is wrong and what is accepted."""
