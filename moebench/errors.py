class UsageError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits with 2."""


class DataError(UsageError):
    """A data file that cannot be read as its task expects; the message names the file (and line)."""
