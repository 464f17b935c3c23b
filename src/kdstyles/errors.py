"""The one exception type for errors a user can cause (config, data, paths, checkpoints).

The CLI prints these as one line without a traceback and exits non-zero; programming
errors still raise normally.
"""


MAX_LINE = 600  # characters of one printed error line (a message quoting a huge value is cut)


def one_line(text: object, limit: int = MAX_LINE) -> str:
    """A message as one printed line: line breaks and other control characters escaped (a file
    name with a newline in it), at most ``limit`` characters (the rest counted, not printed)."""
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return s if len(s) <= limit else f"{s[:limit]}... ({len(s) - limit:,} more characters)"


def unknown(what: str, name: object, allowed: list[str]) -> str:
    """The message for a name no registry holds: the nearest names, then every allowed one."""
    import difflib

    near = difflib.get_close_matches(str(name), allowed, n=3)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return f"unknown {what} '{name}'{hint}; allowed: {', '.join(allowed)}"


def check_new_name(kind: str, name: str, built_in: frozenset) -> None:
    """A plugin's register call (kdstyles.plugins): a built-in name is kept, in one line; a
    plugin's own name may be registered again (it replaces the earlier)."""
    if name in built_in:
        raise KDError(f"register_{kind}: '{name}' is a built-in {kind}; give yours another name")


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
