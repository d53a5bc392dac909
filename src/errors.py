"""The one error type for problems the user can fix: main prints its message and exits with its code."""


class TrainerError(Exception):
    """A problem the message explains (one line: what is wrong, then the fix); exit status 1."""

    exit_code = 1
    quiet = False  # True where another process has printed the message already (torchrun's other ranks)
