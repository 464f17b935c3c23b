"""What may be written into a Slurm job script: every value kdstyles puts on an ``#SBATCH``
line (partition, account, memory, extra options, the job's name and its log folder).

submitit writes each option as ``#SBATCH --key='value'``. sbatch reads those lines only up to
the first line that is not a comment, so a value that carries a line break ends the options
there and what follows it becomes a shell command of the job (and the preemption signal and
the time limit, written after it, are dropped). A value therefore must stay on its line and
hold no shell syntax that Slurm never needs (quotes, ``$``, backquotes, backslashes); a key is
a plain option name, and the options kdstyles sets itself (the signal, the time limit, the
logs, the dependency) cannot be replaced through ``extra``.
"""

from __future__ import annotations

import re

OWN = {"signal": "kdstyles's preemption signal", "time": "--slurm-time", "output": "the job's log",
       "error": "the job's log", "open-mode": "the job's log", "job-name": "the run's name",
       "array": "tune --workers", "dependency": "the shared teacher's job", "kill-on-invalid-dep": "the shared teacher",
       "ntasks-per-node": "--gpus-per-run", "gpus-per-node": "--gpus-per-run", "cpus-per-task": "--cpus-per-run",
       "partition": "--slurm-partition", "mem": "--mem", "account": "--slurm-account", "wckey": "submitit"}
_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_MEM = re.compile(r"^[0-9]+[KMGT]?B?$", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9_.,:+@%=/-]+$")  # partitions, accounts: Slurm's names and comma lists
SHELL = set("'\"`$\\")


def escaped(text: str) -> str:
    """A name as a message prints it: control characters (a line break in a file name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def check_value(value: str) -> str:
    """A value for an ``#SBATCH`` line; a ValueError saying what is wrong (the caller names the option)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("needs a value")
    bad = next((c for c in value if not c.isprintable() or c in SHELL), None)
    if bad is not None:
        what = "a line break or control character" if not bad.isprintable() else f"'{bad}'"
        raise ValueError(f"'{escaped(value)}': {what} cannot go into a Slurm job script (it would leave its "
                         "#SBATCH line or be read by the shell); give the value Slurm expects, e.g. high, a100")
    if len(value) > 200:
        raise ValueError(f"{len(value)} characters; at most 200")
    return value.strip()


def check_mem(value: str) -> str:
    """Memory per node as Slurm reads it."""
    value = check_value(value)
    if not _MEM.match(value):
        raise ValueError(f"'{escaped(value)}' is not memory as Slurm writes it: a whole number with an optional "
                         "unit K, M, G or T (e.g. 32G, 64000M)")
    return value


def check_name(value: str) -> str:
    """A partition or account: Slurm names (a comma list for partitions)."""
    value = check_value(value)
    if not _NAME.match(value):
        raise ValueError(f"'{escaped(value)}' is not a Slurm name (letters, digits, _ - . and commas between several)")
    return value


def check_extra(key: str, value: str) -> tuple[str, str]:
    """One extra option (``--slurm-extra KEY=VALUE``, ``launcher.extra``): its key as submitit
    takes it (``_`` for ``-``) and its value; a ValueError naming the option otherwise."""
    flag = str(key).strip().replace("_", "-")
    if not _KEY.match(flag):
        raise ValueError(f"'{escaped(key)}' is not an option name of sbatch (letters, digits, - and _; e.g. qos, "
                         "constraint, mail-type)")
    if flag in OWN:
        raise ValueError(f"{flag}: kdstyles sets it itself ({OWN[flag]})"
                         + (f"; use {OWN[flag]}" if OWN[flag].startswith("--") else "; leave it out"))
    try:
        return flag.replace("-", "_"), check_value(value)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None


def check_path(path: str) -> str:
    """A folder written into the script (the jobs' logs): it must stay on its line."""
    if any(not c.isprintable() for c in str(path)):
        raise ValueError(f"'{escaped(path)}': a path with a line break or control character cannot go into a "
                         "Slurm job script; choose another folder")
    return path
