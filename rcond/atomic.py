"""Atomic output directories: build in a hidden temp dir beside the target, then rename.

An interrupted or failed run leaves no directory at the target path (the temp dir is removed
on exceptions, Ctrl-C and SIGTERM; after SIGKILL only a ``.name.tmp-*`` dir remains, which no
loader accepts because the target path never appeared). Such a leftover is removed by the next
run for the same target on the same machine: a run holds a lock (``flock``) on a file beside its
temp dir, which the system lets go of however the process ends, so a temp dir whose lock nobody
holds belongs to no live run (:func:`remove_leftovers`; where there is no ``flock``, on Windows,
nothing is removed, and a lock file written on another machine is never taken for free, since
a network file system may lock per machine). A Ctrl-C whose KeyboardInterrupt Python
had to drop (raised inside a ``__del__`` or another finalizer, which only prints "Exception
ignored") is still noticed: a command records signals from its start (:func:`recording_interrupts`),
and no output of it is published after one (:func:`raise_if_interrupted`), nor training started.
A short step that must not stop half-way (starting a worker process) holds signals back until it
is done (:func:`interrupts_deferred`). A signal that meets importlib's own code is raised a moment
later instead (raised there, it can leave the import lock held and the other threads hung).
``--overwrite`` replaces an existing target only after the new one is complete, and only an
earlier output of the same kind (:class:`OutputKind`: a corpus, a toy world, a report, a demo)
holding nothing but what that kind writes, never a file, a folder of something else, or an
output with a user's files (or another output) inside it. Parent folders a failed run created are removed again. The published
directory (or file, through :func:`as_created`) gets the permissions a plain ``mkdir`` / ``open``
would give under the process's umask, not the owner-only ones ``tempfile`` creates its temp
entries with.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


class OutputExistsError(FileExistsError):
    pass


BROWSER_LITTER = (".DS_Store", "._*", "Thumbs.db", "desktop.ini")  # what opening a folder may leave in it


@dataclass(frozen=True)
class OutputKind:
    """What a command writes, told by ``markers``, entries that every such output directory
    holds (a file, or a folder where the name ends with ``/``), and ``extras``, the names (glob
    patterns) of the other entries it may write: ``--overwrite`` replaces only a directory of this
    kind (or an empty one) that holds nothing else, so that no file a user put there, nor another
    output written inside it, is deleted with it."""

    name: str  # for messages: "an rcond corpus"
    markers: tuple[str, ...]
    extras: tuple[str, ...] = ()

    def holds(self, path: Path) -> bool:
        return path.is_dir() and all((path / m).is_dir() if m.endswith("/") else (path / m).is_file()
                                     for m in self.markers)

    def foreign(self, path: Path) -> list[str]:
        """The entries of the directory ``path`` that an output of this kind does not write, sorted;
        a file browser's litter (``.DS_Store``, ``Thumbs.db``...) is not counted."""
        ours = {m.rstrip("/") for m in self.markers}
        return sorted(e.name for e in path.iterdir() if e.name not in ours
                      and not any(fnmatch.fnmatchcase(e.name, x) for x in self.extras + BROWSER_LITTER))


class OutputPathError(OSError):
    """The output cannot be created where it was asked for (no such place, no permission, read-only)."""


@contextlib.contextmanager
def creating(target: str | Path) -> Iterator[None]:
    """Around the creation of an output (its folder, its temp sibling): an OSError there becomes an
    :class:`OutputPathError` that names the target, instead of a traceback about a temp name."""
    try:
        yield
    except OSError as e:
        blocking = file_in_the_way(Path(target))
        if blocking is not None:
            raise OutputPathError(f"{target}: cannot create the output there: {blocking} is a file, not a "
                                  f"folder") from e
        raise OutputPathError(f"{target}: cannot create the output there ({e.strerror or e}); "
                              f"choose a writable location") from e


def file_in_the_way(path: Path, *, itself: bool = False) -> Path | None:
    """The first of ``path``'s folders (and, with ``itself``, ``path``) that exists but is not a
    folder: what makes an output there impossible to create. None if there is none."""
    return next((p for p in ((path,) if itself else ()) + tuple(path.parents) if p.exists() and not p.is_dir()),
                None)


def temp_dir_beside(target: Path) -> Path:
    """A new hidden ``.NAME.tmp-*`` directory next to ``target`` (its parent made if needed), with
    the mode ``mkdir`` would give it: where an output is built before it is renamed into place."""
    with creating(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        return as_created(tempfile.mkdtemp(prefix=f".{_short(target.name)}.tmp-", dir=target.parent))


def temp_file_beside(target: Path) -> tuple[int, Path]:
    """A new hidden ``.NAME.*.tmp`` file next to ``target`` (its parent made if needed), open for
    writing (its descriptor and path), with the mode ``open`` would give it: where an output file is
    written before it is renamed into place."""
    with creating(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{_short(target.name)}.", suffix=".tmp", dir=target.parent)
    try:
        return fd, as_created(tmp)
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise


LOCK_SUFFIX = ".lock"  # beside a temp dir ``.NAME.tmp-XXXXXXXX``: its lock file, held while its run lives


def _locked_beside(tmp: Path):
    """Lock ``tmp``'s lock file for this process and return its open descriptor (closing it lets
    the lock go), or None where the system has no ``flock``. The file is made and locked under a
    staging name, then renamed into place: no other run ever sees it unlocked. It holds this
    machine's name, so that only runs on this machine judge whether its lock is held."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    fd, staging = tempfile.mkstemp(prefix=f"{tmp.name}.lk-", dir=tmp.parent)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{_machine()}\n{os.getpid()}\n".encode())
        os.replace(staging, _lock_file(tmp))
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise
    return fd


def _lock_file(tmp: Path) -> Path:
    return tmp.with_name(tmp.name + LOCK_SUFFIX)


def _machine() -> str:
    import socket

    return socket.gethostname()


def _let_go(tmp: Path, fd) -> None:
    """Remove ``tmp``'s lock file and let its lock go (``fd`` from :func:`_locked_beside`)."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(_lock_file(tmp))
    os.close(fd)


def remove_leftovers(target: Path) -> list[Path]:
    """Remove the temp dirs that runs for ``target`` killed on this machine left beside it (a
    SIGKILL cannot be caught): each ``.NAME.tmp-*`` dir whose lock file was written here and is
    held by no process, with that file. A live run's lock is held; a temp dir without a lock
    file (an older rcond's, or one whose run died before locking) is kept. Returns the dirs
    removed."""
    try:
        import fcntl
    except ImportError:
        return []
    prefix, removed = f".{_short(target.name)}.tmp-", []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(LOCK_SUFFIX)):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if os.read(fd, 4096).decode(errors="replace").split("\n")[0] != _machine():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: a live run's
                continue
            tmp = Path(entry.path[:-len(LOCK_SUFFIX)])
            shutil.rmtree(tmp, ignore_errors=True)
            if not tmp.exists():
                os.unlink(entry.path)
                removed.append(tmp)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _short(name: str) -> str:
    """A name cut so that a hidden sibling named after it (``.NAME.tmp-XXXXXXXX.lock``, and its
    staging name) stays within the 255 bytes a file name may have."""
    return name.encode()[:200].decode(errors="ignore")  # UTF-8 (check_target refuses other names), cut at a character


def missing_folders(target: Path) -> list[Path]:
    """The folders above ``target`` that do not exist yet, nearest first: those a run creates."""
    missing, folder = [], target.absolute().parent
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run created, nearest first, as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _umask_by_setting() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_IMPORT_UMASK = _umask_by_setting()  # at import; setting the umask to read it is not thread-safe


def _umask() -> int:
    """The process's umask now: from /proc where the kernel reports it (Linux >= 4.7), else the
    one read at import."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return _IMPORT_UMASK


def as_created(path: str | Path) -> Path:
    """Give a temp file or directory the mode ``open`` / ``mkdir`` would have given it."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())
    return path


_recorded: list[int] = []  # SIGINT/SIGTERM that arrived while recording; the outermost recording starts it empty
_depth = 0  # recordings open now
_published: list[Path] = []  # outputs atomic_dir put in place since the outermost recording began


_IMPORT_MACHINERY = frozenset({"<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>"})
_SEND_AGAIN_AFTER = 0.005  # seconds
_resent = False  # a signal _record put off is on its way back: the same signal, not a new one


def _record(signum, frame):
    """Record the signal and raise it as KeyboardInterrupt, except inside the import machinery's
    own code: there it is sent again a moment later. importlib takes the global import lock
    before the ``try`` that releases it (in ``_get_module_lock`` and in the callback that drops a
    module lock, which runs whenever the lock object is freed), so a KeyboardInterrupt raised
    between the two leaves the lock held by this thread, and the next import in any other thread
    waits forever: a Ctrl-C at such a moment hung `rcond preprocess --tokenizer train:N`."""
    global _resent
    if not _resent:
        _recorded.append(signum)
    _resent = False
    if frame is not None and frame.f_code.co_filename in _IMPORT_MACHINERY:
        _resent = True
        _send_again(signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")


def _send_again(signum: int) -> None:
    """Send ``signum`` to the main thread again after :data:`_SEND_AGAIN_AFTER`, if a recording
    is still open (its handler, or :func:`interrupts_deferred`', then takes it)."""
    main = threading.main_thread().ident

    def later() -> None:
        if _depth > 0:
            signal.pthread_kill(main, signum)

    timer = threading.Timer(_SEND_AGAIN_AFTER, later)
    timer.daemon = True
    timer.start()


def _take_over(handler, also: tuple = ()) -> dict[int, object]:
    """Install ``handler`` for SIGINT and SIGTERM where each has its default handler (or one of ``also``);
    a handler someone else set is left alone. Returns the handlers replaced, to restore. Only the
    main thread can set handlers: elsewhere nothing is installed."""
    previous: dict[int, object] = {}
    if _in_main_thread():
        for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(sig) in (default, *also):
                previous[sig] = signal.signal(sig, handler)
    return previous


@contextlib.contextmanager
def recording_interrupts() -> Iterator[None]:
    """While inside, SIGINT and SIGTERM are recorded, then raised as KeyboardInterrupt as Python
    raises a Ctrl-C (SIGTERM too: the work stops and cleans up the same way). A handler other than
    the default (a training loop's) is left alone. Recordings nest and share one record: a command
    opens one around all its work, and every output it publishes checks the record first
    (:func:`raise_if_interrupted`), so a signal whose KeyboardInterrupt Python dropped is still
    honoured."""
    global _depth, _resent
    if _depth == 0:
        _recorded.clear()
        _published.clear()
        _resent = False
    _depth += 1
    previous: dict[int, object] = {}
    try:
        previous = _take_over(_record)
        yield
    finally:
        for sig, handler in previous.items():  # first: a second Ctrl-C during clean-up must not find ours
            signal.signal(sig, handler)
        _depth -= 1


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Inside, SIGINT and SIGTERM are held back and raised as KeyboardInterrupt on leaving (and
    recorded, under :func:`recording_interrupts`): for a short step that must not stop half-way,
    such as starting a worker process, whose half-started child nobody would then stop. A handler
    other than the default or :func:`recording_interrupts`' is left alone; outside the main thread
    (where no handler runs) this does nothing."""
    held: list[int] = []
    previous = _take_over(lambda signum, frame: held.append(signum), also=(_record,))
    try:
        yield
    except BaseException as e:  # a failure inside while a signal was held (a child the signal also hit,
        if held:                # say) is the interrupt's doing: the interrupt is what is raised
            raise _held_interrupt(held) from e
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        raise _held_interrupt(held)


def _held_interrupt(held: list[int]) -> KeyboardInterrupt:
    """The KeyboardInterrupt for signals held back, recorded under :func:`recording_interrupts`."""
    if _depth > 0:
        _recorded.extend(held)
    return KeyboardInterrupt(f"signal {held[0]}")


def raise_if_interrupted() -> None:
    """Before publishing an output or starting long work: a signal recorded by an open
    :func:`recording_interrupts` whose KeyboardInterrupt Python had to drop (raised inside
    ``__del__`` or another finalizer, which only prints "Exception ignored") is raised now."""
    if interrupt_recorded():
        raise KeyboardInterrupt(f"signal {_recorded[0]}")


def outputs_published() -> list[Path]:
    """The outputs :func:`atomic_dir` has put in place since the outermost :func:`recording_interrupts`
    began (kept after it ends, for the command's last words): an interrupt after one of them does
    not undo it."""
    return list(_published)


def interrupt_recorded() -> bool:
    """A signal was recorded by the recordings open now (:func:`recording_interrupts`)."""
    return bool(_recorded) and _depth > 0


def _refuse(target: Path, overwrite: bool, kind: OutputKind | None) -> None:
    """Refuse a target that exists and is not an empty folder: always a file, a folder that is
    not of ``kind`` (None: any folder may be replaced), and without ``overwrite`` anything."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_dir() and not any(target.iterdir()):
        return
    if not target.is_dir():
        raise OutputExistsError(f"{target} is a file, not a directory; give a directory to write the output into")
    if kind is not None and not kind.holds(target):
        raise OutputExistsError(f"{target} already exists and is not {kind.name} (which holds "
                                f"{', '.join(kind.markers)}); only an earlier output of this kind is replaced: "
                                f"choose another directory, or empty this one yourself")
    foreign = kind.foreign(target) if kind is not None else []
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputExistsError(f"{target} holds {kind.name} and also {shown}, which {kind.name} does not hold; "
                                f"replacing it would delete them: move them out, or choose another directory")
    if not overwrite:
        raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")


def _within(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies inside it (both resolved, so links and ``..`` are seen through)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def name_max(path: str | bytes | os.PathLike) -> int:
    """The longest file name (in bytes) the file system at ``path``, or at the nearest folder
    above it that exists, allows; 255 where the system does not say."""
    folder = Path(os.fsdecode(path)).absolute()
    while not os.path.isdir(folder) and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_target(target: str | Path, keep: tuple[str | Path, ...] = ()) -> Path:
    """The output path, refused when publishing it would replace what must survive: an empty
    path, the current directory or a folder holding it (a rename cannot move them, and replacing
    them would pull the ground from under the command), or one of ``keep`` (the command's
    inputs) or a folder holding one, which ``--overwrite`` would delete; and refused when a name
    in it is longer than the file system allows (before any folder of it is made), or when it is
    not UTF-8 (the tokenizer library writes only to paths it can hold as UTF-8 text)."""
    if not str(target).strip():
        raise OutputPathError("the output path is empty; give a new directory to write into")
    try:
        str(target).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(target).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise OutputPathError(f"{shown}: the output path is not valid UTF-8 (a byte of another encoding in a name); "
                              f"give a path in UTF-8") from None
    target = Path(target)
    limit = name_max(target)
    long = next((part for part in target.parts if len(os.fsencode(part)) > limit), None)
    if long is not None:
        raise OutputPathError(f"{target}: the name {long[:24]}... has {len(os.fsencode(long))} bytes; expected at "
                              f"most {limit} per name on this file system")
    if _within(Path.cwd(), target):
        raise OutputPathError(f"{target}: is the current directory or holds it; give a new directory to write into")
    for item in keep:
        if Path(item).exists() and _within(Path(item), target):
            what = "is" if Path(item).resolve() == target.resolve() else "holds"
            raise OutputPathError(f"{target}: {what} the input {item}, which writing the output would replace; "
                                  f"write the output somewhere else")
    return target


def check_output(target: str | Path, overwrite: bool = False, keep: tuple[str | Path, ...] = (),
                 kind: OutputKind | None = None) -> Path:
    """What :func:`atomic_dir` refuses, checked on its own: a command calls it before long work
    (reading the input, training a tokenizer) so that a bad ``--out`` costs nothing."""
    target = check_target(target, keep)
    _refuse(target, overwrite, kind)
    return target


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False, keep: tuple[str | Path, ...] = (),
               kind: OutputKind | None = None) -> Iterator[Path]:
    """Yield a temp dir; on clean exit it becomes ``target``.

    A target that must not be replaced is refused first (:func:`check_target`; ``keep``: the
    inputs). An existing non-empty target is refused unless ``overwrite`` and, with a ``kind``,
    unless it is an output of that kind; a file always. Checked before the work and again before
    publishing (something may have appeared there meanwhile). When replacing, the old target is
    moved aside first and moved back if the new one cannot take its place. Folders above the
    target that the run created are removed again when it fails.
    """
    target = check_output(target, overwrite, keep, kind)
    made = missing_folders(target)
    published = False
    remove_leftovers(target)
    try:
        tmp = temp_dir_beside(target)
    except BaseException:
        remove_if_empty(made)
        raise
    try:
        lock = _locked_beside(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_if_empty(made)
        raise
    try:
        with recording_interrupts():
            yield tmp
            raise_if_interrupted()
        _refuse(target, overwrite, kind)
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{_short(target.name)}.old-", dir=target.parent))
            try:
                with interrupts_deferred():  # a signal between the renames would leave neither output
                    os.replace(target, trash / "old")
                    try:
                        os.replace(tmp, target)
                    except BaseException:
                        os.replace(trash / "old", target)
                        raise
                    published = True
                    _published.append(target)
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        else:
            with interrupts_deferred():  # published is true once the rename is done, whatever comes
                os.replace(tmp, target)
                published = True
                _published.append(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        _let_go(tmp, lock)
        if not published:
            remove_if_empty(made)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
