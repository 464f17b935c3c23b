"""Files, safely (no torch): crash-safe writes, one reader for every file kdstyles reads
back, and a lock per folder.

- Writes go to a temporary file in the same folder, then ``os.replace``: a crash (or a full
  disk) never leaves a half-written file where a good one was. New files get the user's
  umask (0644 typically), not mkstemp's 0600, so colleagues can read results.
- :func:`read_json` and :func:`read_csv` turn a missing, damaged or non-UTF-8 file into one
  line naming it and saying how to recover.
- :class:`FolderLock` keeps two processes from writing one run folder: an ``fcntl`` lock
  (released by the kernel when its holder dies, however it dies) on a file holding the PID.
- File names that are not valid UTF-8 travel as Python's surrogate escapes and are written
  back byte for byte (``errors="surrogateescape"``).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

from ..errors import KDError

ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}
TEMP_SUFFIX = ".tmp"


NAME_MAX = 255  # bytes of one file or folder name on common file systems (ext4, XFS, APFS, NTFS)


def check_path_text(v: str) -> None:
    """A ValueError where a path cannot exist on any file system kdstyles runs on (a NUL, a name
    longer than NAME_MAX bytes), said before anything tries to create or open it."""
    if "\0" in v:
        raise ValueError("a path cannot hold a NUL character")
    long = next((part for part in v.replace("\\", "/").split("/") if len(part.encode()) > NAME_MAX), None)
    if long is not None:
        raise ValueError(f"the path's part '{long[:40]}...' is {len(long.encode())} bytes; a file or folder name "
                         f"holds at most {NAME_MAX}")


def check_folder_text(folder: str | Path, what: str) -> None:
    """:func:`check_path_text` for a folder a command was given, as one line naming the option."""
    try:
        check_path_text(str(folder))
    except ValueError as exc:
        raise KDError(f"{what} '{folder}': {exc}") from None


def cache_root() -> Path:
    """Where kdstyles keeps what it can make again (prepared volumes, embedded images, a frozen
    teacher's outputs): ``$KDSTYLES_CACHE``, else ``$XDG_CACHE_HOME/kdstyles`` or ``~/.cache/kdstyles``."""
    root = os.environ.get("KDSTYLES_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kdstyles")
    return Path(root)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` then move the file into place atomically. An OS error (a full
    disk, a read-only folder) is a one-line KDError; the previous file stays intact."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
    except OSError as exc:
        raise KDError(f"cannot write '{path}': {exc.strerror or exc}") from None
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            why = "the disk is full" if full else (exc.strerror or str(exc).splitlines()[0][:100])
            kept = f"the previous '{path.name}' is intact" if path.exists() else "nothing was written"
            raise KDError(f"cannot write '{path}': {why}; {kept}") from None
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, **ENCODING))


def write_json(path: str | Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, allow_nan=True) + "\n")


def clean_temp_files(folder: str | Path) -> list[Path]:
    """Remove temporary files that a killed write left behind (``.NAME.*.tmp``), in the folder
    and its subfolders. Call it only while holding the folder's lock."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.rglob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def read_json(path: str | Path, recover: str, kind: type = dict) -> Any:
    """A JSON file kdstyles wrote; missing, damaged or of the wrong shape -> one line naming
    the file and ``recover`` (what to do about it)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KDError(f"'{path}' is missing; {recover}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KDError(f"'{path}' cannot be read ({getattr(exc, 'strerror', None) or exc.__class__.__name__}); "
                      f"{recover}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KDError(f"'{path}' is damaged (not valid JSON: {exc.msg} at line {exc.lineno}); {recover}") from None
    if not isinstance(value, kind):
        raise KDError(f"'{path}' is damaged (holds a JSON {type(value).__name__}, expected "
                      f"{'an object' if kind is dict else 'a list'}); {recover}")
    return value


def read_csv(path: str | Path, recover: str, required: tuple[str, ...] = (), own: bool = False
             ) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts; unreadable, non-UTF-8, malformed or lacking ``required``
    columns -> one line naming the file (and the line) and ``recover``. ``own``: a file
    kdstyles wrote (non-UTF-8 file names in it come back byte for byte)."""
    path = Path(path)
    line = 1
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape" if own else "strict") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            # 'Path', 'Label', 'Split' name the same columns as 'path', 'label', 'split'
            known = {c.lower(): c for c in (*required, "label", "split")}
            rename = {f: known[f.lower()] for f in fields if f.lower() in known and known[f.lower()] not in fields}
            fields = [rename.get(f, f) for f in fields]
            missing = [c for c in required if c not in fields]
            if missing:
                raise KDError(f"CSV file '{path}' needs the column(s) {', '.join(required)}; found: "
                              f"{', '.join(fields) or 'none'}; {recover}")
            rows = []
            for row in reader:
                line = reader.line_num
                rows.append({rename.get(k.strip(), k.strip()): (v or "").strip() for k, v in row.items()
                             if isinstance(k, str)})
    except FileNotFoundError:
        raise KDError(f"CSV file '{path}' does not exist; {recover}") from None
    except UnicodeDecodeError:
        raise KDError(f"CSV file '{path}' near line {line + 1} is not UTF-8 text; save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise KDError(f"CSV file '{path}' line {line + 1} is malformed ({exc}); {recover}") from None
    except IsADirectoryError:
        raise KDError(f"'{path}' is a folder, not a CSV file") from None
    except OSError as exc:
        raise KDError(f"CSV file '{path}' cannot be read ({exc.strerror}); {recover}") from None
    return rows


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_npz(path: str | Path, arrays: dict[str, Any], compressed: bool = False) -> None:
    """Numpy arrays as one ``.npz`` (no pickles), written atomically (:func:`atomic_write`)."""
    import numpy as np

    save = np.savez_compressed if compressed else np.savez

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            save(f, **arrays)

    atomic_write(path, write)


def read_npz(path: str | Path) -> dict[str, Any] | None:
    """The arrays of an ``.npz`` written by :func:`write_npz`, or None when it is missing or
    damaged (a cache file is then simply made again)."""
    import zipfile

    import numpy as np

    if not Path(path).is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def make_folder(folder: Path, what: str = "folder") -> None:
    """``folder`` and its parents created (if missing), or one line saying why they cannot be:
    a file in the way, no permission."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        inside = f": '{blocker}'" if blocker != folder else ""
        raise KDError(f"{what} '{folder}'{inside} is a file, not a folder; choose another place") from None
    except OSError as exc:
        raise KDError(f"{what} '{folder}' cannot be created ({exc.strerror or exc})") from None


def write_folder(folder: Path, fill: Callable[[Path], Any], ours: Callable[[Path], bool], what: str) -> Any:
    """``folder`` written whole or not at all: ``fill`` writes into a new sibling folder, which
    then takes ``folder``'s place. An earlier folder is replaced only where ``ours`` says this
    command wrote it (otherwise, unless it is empty, one line and nothing touched); a crash
    leaves the earlier folder as it was and at most a hidden ``.NAME.*`` sibling."""
    import shutil

    if folder.exists() and not (folder.is_dir() and (not any(folder.iterdir()) or ours(folder))):
        kind = "a folder of other files" if folder.is_dir() else "a file"
        raise KDError(f"{what} '{folder}' is {kind}; give a new or empty folder")
    make_folder(folder.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        result = fill(staging)
        os.chmod(staging, 0o777 & ~_umask())
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}") if folder.exists() else None
        if old is not None:
            os.replace(folder, old)
        os.replace(staging, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return result
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


class FolderLock:
    """An exclusive lock on a folder while a process writes it (``FOLDER/.lock`` holds its PID).

    A second process gets a one-line KDError naming the holder's PID. The lock is an
    ``fcntl.flock`` on the file, which the kernel releases when the holder dies (even by
    SIGKILL), so a lock left by a dead process is simply taken over."""

    NAME = ".lock"

    def __init__(self, folder: str | Path, what: str = "run folder", name: str = NAME, wait: bool = False):
        self.folder, self.what, self.wait = Path(folder), what, wait  # wait: block until the holder is done
        self.path = self.folder / name
        self._fd: int | None = None
        self.took_over: int | None = None  # PID of a dead holder whose lock was taken over

    def holder(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def acquire(self) -> "FolderLock":
        make_folder(self.folder, self.what)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                pid = self.holder()
                who = f"process {pid}" if pid else "another process"
                raise KDError(f"{self.what} '{self.folder}' is in use by {who} (lock {self.path}); wait for it to "
                              f"finish or stop it{f' (kill {pid})' if pid else ''}, then run this again") from None
        except ImportError:  # no fcntl (not POSIX): fall back to the PID's liveness
            pid = self.holder()
            if pid and pid != os.getpid() and _alive(pid):
                os.close(fd)
                raise KDError(f"{self.what} '{self.folder}' is in use by process {pid} (lock {self.path})") from None
        previous = self.holder()
        if previous and previous != os.getpid() and not _alive(previous):
            self.took_over = previous
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: PyYAML
    keeps the last one, so a second ``data:`` section would silently drop the first."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor': its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice in one section (lines {seen[key] + 1} and "
                                f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    """An experiment YAML (or a recipes file): a mapping, read with the safe loader, a key given
    twice refused; every way it can fail is one line naming the file."""
    path = Path(path)
    try:
        check_path_text(str(path))
    except ValueError as exc:
        raise KDError(f"config file '{path}': {exc}") from None
    if path.is_dir():
        raise KDError(f"config file '{path}' is a folder; give an experiment .yaml file")
    if not path.is_file():
        raise KDError(f"config file '{path}' does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.load(text, Loader=_UniqueKeys)  # noqa: S506 (a safe loader)
    except UnicodeDecodeError:
        raise KDError(f"config file '{path}' is not UTF-8 text (is it a YAML file?)") from None
    except RecursionError:
        raise KDError(f"config file '{path}': nested too deeply to read (sections inside sections more than a few "
                      "hundred levels down); an experiment needs a handful") from None
    except OSError as exc:
        raise KDError(f"config file '{path}' cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = str(getattr(exc, "problem", exc))
        hint = ("; in double quotes a backslash starts an escape: write the path in single quotes or with /"
                if "escape character" in problem else "")
        raise KDError(f"config file '{path}'{where}: not valid YAML ({problem}){hint}") from None
    if raw is None:
        import sys

        print(f"warning: config file '{path}' is empty; every key takes its default (the demo experiment)",
              file=sys.stderr)
        raw = {}
    if not isinstance(raw, dict):
        raise KDError(f"config file '{path}': expected a mapping of sections (data, networks, ...) at the top")
    return raw
