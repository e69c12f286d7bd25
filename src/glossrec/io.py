"""Files for every stage: line-numbered JSONL reading, and the one owner of crash-safe writes.

Every write that must survive a crash (kill -9 included) goes through one of three tools here:

- :func:`atomic_write`: one file (temp file, fsync, rename over);
- :func:`atomic_dir`: one folder, all of its files at once (filled under a temporary name, fsynced,
  then swapped into place in one rename: ``renameat2(RENAME_EXCHANGE)`` on Linux);
- :class:`Versions`: a folder of numbered versions and a pointer file naming the current one,
  for state that readers may be reading while a writer publishes (a retriever's saves, the
  live catalog). A version can also be built in two steps (:meth:`Versions.stage`, then
  :meth:`Versions.publish_staged`), so that the long part runs without the writers' lock.

:func:`fault_point` is where the crash tests stop a writer (an environment variable names the
point and a delay); it does nothing otherwise.
"""

from __future__ import annotations

import ctypes
import fcntl
import gzip
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import IO, Any

from glossrec.errors import DataError


def open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def parse_json_object(text: str, path: Path, lineno: int) -> dict[str, Any]:
    """One JSONL line as an object; a DataError naming the file and line otherwise."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg} at column {e.colno})", path, lineno) from None
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", path, lineno)
    return obj


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object); errors name the file and line. Blank lines are skipped."""
    lineno = 0
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    yield lineno, parse_json_object(line, path, lineno)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise DataError("file not found", path) from None
        raise DataError(f"truncated or corrupt file after line {lineno} ({e})", path, lineno + 1) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason})", path, lineno + 1) from None


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path`, fsync, then rename over it.

    A crash at any point leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.write("\n")


GIL_PAUSE_S = 1e-4
"""How long :func:`yield_gil` sleeps: long enough that a thread waiting for the GIL gets it."""


def yield_gil() -> None:
    """Let the process's other threads run Python for a moment. A long pure-Python job in a
    background thread (a live catalog's snapshot) calls it every few hundred microseconds of
    work: otherwise a serving thread that blocks on I/O waits up to the interpreter's switch
    interval (5 ms) for the GIL after every system call."""
    time.sleep(GIL_PAUSE_S)


def write_json_strings(path: Path, values: Sequence[str], chunk: int = 4096) -> None:
    """A JSON list of strings, the bytes :func:`write_json` writes, encoded `chunk` strings at a
    time in C with :func:`yield_gil` between chunks (a million titles in a snapshot)."""
    with atomic_write(path) as f:
        if not values:
            f.write("[]\n")
            return
        f.write("[\n ")
        for start in range(0, len(values), chunk):
            if start:
                f.write(",\n ")
                yield_gil()
            f.write(",\n ".join(map(encode_basestring, values[start:start + chunk])))
        f.write("\n]\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    opener_gz = Path(path).suffix == ".gz"
    if opener_gz:
        with atomic_write(path, "wb") as f:
            with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
                for r in rows:
                    gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
    else:
        with atomic_write(path) as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg})", path, e.lineno) from None


# ---- folders ---------------------------------------------------------------------------------

FAULT_ENV = "GLOSSREC_TEST_FAULT_DELAY"
"""``POINT:SECONDS``: a writer sleeps at that fault point (crash tests kill it there)."""


def fault_point(name: str) -> None:
    """Sleep here if the crash tests asked for it (see FAULT_ENV); otherwise nothing."""
    spec = os.environ.get(FAULT_ENV, "")
    if spec.startswith(name + ":"):
        time.sleep(float(spec.split(":", 1)[1]))


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (its renames and contents become durable)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def atomic_dir(final: Path, fill: Callable[[Path], None], keep_others: bool = False) -> Path:
    """Fill a temporary folder beside `final`, fsync it, then put it in place of `final` in one
    step: a crash leaves the old folder or the new one, never a mix.

    keep_others: files and folders of an existing `final` that `fill` did not write (a README
    beside a dataset, the raw downloads under it) are carried over (hard links, or copies
    across devices).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    os.chmod(tmp, 0o755)
    try:
        fill(tmp)
        if keep_others and final.is_dir():
            for p in final.iterdir():
                if (tmp / p.name).exists() or p.is_symlink():
                    continue
                if p.is_dir():
                    shutil.copytree(p, tmp / p.name, copy_function=_link_or_copy)
                elif p.is_file():
                    _link_or_copy(p, tmp / p.name)
        fsync_tree(tmp)
        if not final.exists():
            os.rename(tmp, final)
        elif _exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        else:  # no atomic swap on this system: two renames, the old one removed last
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@dataclass
class Staged:
    """A complete version built by :meth:`Versions.stage`, not yet published. ``fd`` holds an
    flock on its folder while this process may still publish it, so that another writer's
    sweep leaves it alone (the lock dies with the process: a crashed build is swept)."""

    path: Path
    fd: int
    """-1 once published or discarded."""


class Versions:
    """Numbered versions in a folder and a pointer file naming the current one.

    :meth:`publish` writes a complete new version under a temporary name, fsyncs it, renames it
    to the next number, fsyncs the folder, replaces the pointer atomically, and only then
    deletes older versions. A crash between any two steps leaves the pointer naming a complete
    version (the old one or the new one); leftovers are swept by the next publish. One writer
    at a time (callers hold a lock or serialise writes); readers never lock.

    In two steps, for a version that takes long to write: :meth:`stage` fills and fsyncs it
    under a temporary name without the writers' lock (other writers may publish meanwhile);
    :meth:`publish_staged`, under the lock, adds the last files and publishes it as above, or
    :meth:`discard` drops it.

    folder/POINTER     names the current version: {"version": NAME} (json_pointer) or NAME
    folder/PREFIXnnnnnn/  one complete version
    """

    def __init__(self, folder: Path, pointer: str, prefix: str, json_pointer: bool = True,
                 what: str = "state", hint: str = "") -> None:
        self.folder = Path(folder)
        self.pointer = pointer
        self.prefix = prefix
        self.json_pointer = json_pointer
        self.what = what
        self.hint = hint
        self._name_re = re.compile(rf"^{re.escape(prefix)}(\d{{6,}})$")

    @staticmethod
    def version_name(tmp: Path) -> str:
        """The version a folder given to publish's `fill` will become (".tmp-NAME-PID" -> NAME)."""
        return Path(tmp).name[len(".tmp-"):].rsplit("-", 1)[0]

    def is_version(self, name: str) -> bool:
        return bool(self._name_re.match(name))

    def _numbers(self) -> list[int]:
        return [int(m.group(1)) for p in self.folder.iterdir() if (m := self._name_re.match(p.name))]

    def exists(self) -> bool:
        return (self.folder / self.pointer).is_file()

    def read_pointer(self) -> str:
        """The current version's name; DataError naming the problem."""
        path = self.folder / self.pointer
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            if not self.folder.is_dir():
                raise DataError(f"{self.what} folder not found", self.folder) from None
            raise DataError(f"no saved {self.what} here (no {self.pointer} file){self.hint}",
                            self.folder) from None
        name: Any = text
        if self.json_pointer:
            try:
                name = json.loads(text)["version"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError('not a version pointer (expected {"version": NAME})', path) from None
        if not isinstance(name, str) or not self.is_version(name):
            raise DataError(f"pointer names {name!r}, not a {self.what} version", path, None,
                            "version" if self.json_pointer else None)
        return name

    def current(self, retries: int = 3) -> Path:
        """The current version's folder (re-read if a concurrent publish just replaced it)."""
        name = ""
        for attempt in range(retries):
            name = self.read_pointer()
            path = self.folder / name
            if path.is_dir():
                return path
            time.sleep(0.05 * (attempt + 1))
        raise DataError(f"{self.pointer} names {name!r}, which does not exist",
                        self.folder / self.pointer)

    def publish(self, fill: Callable[[Path], None], keep_previous: bool = False) -> Path:
        """Write `fill(dir)` as the next version and make it current; returns its folder.

        keep_previous: the version that was current stays too (readers that opened it just
        before may still be loading it); otherwise only the new one is kept.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        previous = self.read_pointer() if self.exists() else None
        self.sweep()
        name = self._next_name()
        tmp = self.folder / f".tmp-{name}-{os.getpid()}"
        tmp.mkdir()
        try:
            fill(tmp)
            fsync_tree(tmp)
            os.rename(tmp, self.folder / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self._make_current(name, previous, keep_previous)

    def _next_name(self) -> str:
        return f"{self.prefix}{max(self._numbers(), default=0) + 1:06d}"

    def _make_current(self, name: str, previous: str | None, keep_previous: bool,
                      trash: list[Path] | None = None) -> Path:
        """The last steps of a publish: the renamed version made durable, then current, then
        the older versions pruned (into `trash`, see :meth:`prune`)."""
        fsync_path(self.folder)
        fault_point("publish")
        self._write_pointer(name)
        self.prune({name, previous} if keep_previous and previous else {name}, trash)
        return self.folder / name

    def stage(self, fill: Callable[[Path], None]) -> Staged:
        """Fill a new version under a temporary name and fsync it; no writers' lock needed.
        Publish it with :meth:`publish_staged` or drop it with :meth:`discard`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f".stage-{self.prefix}{os.getpid()}-{secrets.token_hex(4)}"
        path.mkdir()
        fd = os.open(path, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        staged = Staged(path, fd)
        try:
            fill(path)
            fsync_tree(path)
        except BaseException:
            self.discard(staged)
            raise
        return staged

    def publish_staged(self, staged: Staged, finish: Callable[[Path, str], None] | None = None,
                       keep_previous: bool = False, trash: list[Path] | None = None) -> Path:
        """Make a staged version current (the caller holds the writers' lock):
        ``finish(folder, name)`` writes its last files knowing the name it will have (each
        fsynced: :func:`atomic_write`), then it is published as :meth:`publish` does, older
        versions pruned into `trash` if given. On an error it is discarded."""
        previous = self.read_pointer() if self.exists() else None
        name = self._next_name()
        try:
            if finish is not None:
                finish(staged.path, name)
                fsync_path(staged.path)  # the rest was fsynced by stage()
            os.rename(staged.path, self.folder / name)
        except BaseException:
            self.discard(staged)
            raise
        os.close(staged.fd)
        staged.fd = -1
        return self._make_current(name, previous, keep_previous, trash)

    @staticmethod
    def discard(staged: Staged) -> None:
        """Remove a staged version that will not be published (once published: nothing)."""
        if staged.fd < 0:
            return
        shutil.rmtree(staged.path, ignore_errors=True)
        os.close(staged.fd)
        staged.fd = -1

    def _write_pointer(self, name: str) -> None:
        with atomic_write(self.folder / self.pointer) as f:
            f.write(json.dumps({"version": name}) + "\n" if self.json_pointer else name + "\n")
        fsync_path(self.folder)

    def sweep(self) -> None:
        """Remove what crashed writers left: temporary versions, staged versions no live
        process holds, pruned versions not yet deleted, and pointer temp files."""
        for p in self.folder.glob(f".tmp-{self.prefix}*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in self.folder.glob(f".stage-{self.prefix}*"):
            if _unheld(p):
                shutil.rmtree(p, ignore_errors=True)
        for p in self.folder.glob(f".trash-{self.prefix}*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in self.folder.glob(f".{self.pointer}.*.tmp"):
            p.unlink(missing_ok=True)

    def prune(self, keep: set[str], trash: list[Path] | None = None) -> None:
        """Delete every version not in `keep` (also complete ones a crash left unpublished).
        `trash` given: they are only renamed out of the way (``.trash-...``, one rename each)
        and appended to it, for the caller to delete with :meth:`empty_trash` once it has
        released its locks."""
        self.sweep()
        for p in self.folder.iterdir():
            if self.is_version(p.name) and p.name not in keep:
                if trash is None:
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    gone = self.folder / f".trash-{p.name}-{os.getpid()}-{secrets.token_hex(4)}"
                    os.rename(p, gone)
                    trash.append(gone)

    @staticmethod
    def empty_trash(trash: list[Path]) -> None:
        """Delete what :meth:`prune` put in `trash` (no lock needed: nothing reads it)."""
        for p in trash:
            shutil.rmtree(p, ignore_errors=True)
        trash.clear()


def _unheld(path: Path) -> bool:
    """True if no process holds the flock of this folder (its stager is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases the lock we may have taken
