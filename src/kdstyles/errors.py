"""The one exception type for errors a user can cause (config, data, paths, checkpoints).

The CLI prints these as one line without a traceback and exits non-zero; programming
errors still raise normally.
"""


class KDError(Exception):
    """A user-facing error: its message is one line naming the key/file and what is allowed."""


class TrainingDiverged(KDError):
    """A loss became non-finite; the message names the network and the loss term."""


class Interrupted(Exception):
    """Training stopped on a signal (SIGINT, SIGTERM, SIGHUP) after writing a checkpoint it can
    resume from exactly. Not a KDError: nothing that handles user errors may swallow it. The
    CLI prints the message as one line and exits with 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
