"""User-facing errors.

Everything that is the user's input being wrong (a file, a name, a checkpoint) raises
:class:`RtsegError` with one line that names the thing and the problem. The CLI prints that line
and exits non-zero; it never shows a traceback unless ``--debug`` is given.
"""
from __future__ import annotations


class RtsegError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code = 2


class DataError(RtsegError):
    """An image, mask, list file or dataset folder that cannot be used."""


class CheckpointError(RtsegError):
    """A checkpoint that cannot be read or does not fit the model."""


class ModelOptionError(RtsegError):
    """Model options (constructor keyword arguments) that the model rejects."""


class ModelNameError(RtsegError, KeyError):
    """An unknown model name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])
