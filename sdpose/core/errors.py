"""What counts as the user's bad input: the one base class the command line maps to exit 2.

Every error that means "this file, record, key or argument cannot be used" derives from
`InputError`, and its message names the file, the record and the field or key. Anything
else that escapes a command is a bug or a failure of the environment: exit 1, one line on
the terminal, the traceback in the command's log (`sdpose.cli`). A ValueError from numpy or
torch deep inside a stage is therefore never reported as the user's input.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input or parameters; the message names the file, record and field or key."""


class MissingInputError(InputError, FileNotFoundError):
    """An input (or an earlier stage's output) that is not there; says what makes it."""
