"""Errors the command line reports as one line (importable without torch)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which and why."""


class DataError(ValueError):
    """Bad input data; the message names the file and line, or the feature."""
