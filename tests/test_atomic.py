"""Atomic output directories: all or nothing, and the old output survives a failed replacement."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DropsACtrlC
from rcond import atomic
from rcond.atomic import OutputExistsError, OutputPathError, atomic_dir


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_appears_only_when_complete(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("1")
        assert not (tmp_path / "out").exists()
    assert names(tmp_path / "out") == ["a.txt"] and names(tmp_path) == ["out"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_leaves_nothing(tmp_path, exc):
    with pytest.raises(type(exc)):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("1")
            raise exc
    assert names(tmp_path) == []


def test_an_output_that_cannot_be_created_names_the_target(tmp_path):
    """Not a traceback about the hidden temp name: the target the user gave, and why."""
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "out"  # its folder would have to be a file's child
    with pytest.raises(OutputPathError, match=f"^{target}: cannot create the output there: {tmp_path / 'afile'} "
                                              f"is a file, not a folder"):
        with atomic_dir(target):
            pytest.fail("the work must not start")
    assert (tmp_path / "afile").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_inputs_and_the_current_directory_are_never_replaced(tmp_path, monkeypatch):
    """--overwrite must not delete the command's own input, or the folder it runs in."""
    (tmp_path / "data" / "docs").mkdir(parents=True)
    (tmp_path / "data" / "docs" / "a.txt").write_text("keep me")
    doc = tmp_path / "data" / "docs" / "a.txt"
    for target, what in ((doc, "is"), (tmp_path / "data" / "docs", "holds"), (tmp_path / "data", "holds")):
        with pytest.raises(OutputPathError, match=f"^{target}: {what} the input {doc}, which writing"):
            with atomic_dir(target, overwrite=True, keep=(str(doc),)):
                pytest.fail("the work must not start")
    with atomic_dir(tmp_path / "data" / "docs" / "corpus", keep=(str(doc),)):  # beside the input: fine
        pass
    monkeypatch.chdir(tmp_path / "data")
    for target in (".", "", "..", tmp_path / "data"):
        with pytest.raises(OutputPathError, match="current directory|empty"):
            with atomic_dir(target, overwrite=True):
                pytest.fail("the work must not start")
    assert doc.read_text() == "keep me" and names(tmp_path) == ["data"]
    assert names(tmp_path / "data") == ["docs"] and names(tmp_path / "data" / "docs") == ["a.txt", "corpus"]


def test_a_failed_move_aside_leaves_no_trash(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("old"):  # moving the old output aside
            raise OSError("busy")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="busy"):
        with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert names(tmp_path / "out") == ["old.txt"] and names(tmp_path) == ["out"]


def test_existing_output_refused_then_replaced(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with atomic_dir(tmp_path / "out"):
            pass
    with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert names(tmp_path / "out") == ["new.txt"] and names(tmp_path) == ["out"]


def test_output_appearing_meanwhile_is_not_clobbered(tmp_path):
    with pytest.raises(OutputExistsError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "mine.txt").write_text("1")
            (tmp_path / "out").mkdir()
            (tmp_path / "out" / "theirs.txt").write_text("2")
    assert names(tmp_path / "out") == ["theirs.txt"] and names(tmp_path) == ["out"]


def test_failed_swap_puts_the_old_output_back(tmp_path, monkeypatch):
    """The old output is moved aside, then the new one fails to take its place: the old one is
    moved back. (The rename that fails is the new output's onto the target; failing every rename
    from a ``.out.tmp-*`` name failed the lock file's, before the work, and never reached the swap.)"""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    real, worked = os.replace, []

    def replace(src, dst):
        if Path(dst) == tmp_path / "out" and Path(src).name.startswith(".out.tmp-"):  # the new output taking its place
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            worked.append(True)
    assert worked == [True]
    assert names(tmp_path / "out") == ["old.txt"] and names(tmp_path) == ["out"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_signal_during_publishing_leaves_the_new_output_in_place(tmp_path, monkeypatch, overwrite):
    """A Ctrl-C that lands while the old output is moved aside (raised when that rename returns)
    deleted both outputs: the old one with the trash folder, the new one as a failed run's temp
    dir. Signals are held back across the renames now: the new output is in place, nothing else is
    left beside it, and the interrupt is raised after."""
    if overwrite:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "old.txt").write_text("old")
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if target in (Path(src), Path(dst)):  # publishing
            moved.append(dst)
            if len(moved) == 1:  # its first rename: a Ctrl-C arrives as it ends
                os.kill(os.getpid(), signal.SIGINT)

    target, moved = tmp_path / "out", []
    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target, overwrite=overwrite) as tmp:
            (tmp / "new.txt").write_text("new")
    assert len(moved) == 1 + overwrite
    assert names(tmp_path / "out") == ["new.txt"] and names(tmp_path) == ["out"]


def test_published_with_the_modes_of_mkdir_and_open(tmp_path):
    """tempfile makes owner-only entries (0700 / 0600); what is published gets what a plain
    mkdir / open gives under the process's umask."""
    import stat

    from rcond.sample import write_jsonl_atomic

    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    with atomic_dir(tmp_path / "out") as d:
        (d / "f").write_text("x")
    (tmp_path / "plain").mkdir()
    assert mode(tmp_path / "out") == mode(tmp_path / "plain")
    write_jsonl_atomic(tmp_path / "s.jsonl", [{"a": 1}])
    (tmp_path / "p.jsonl").write_text("")
    assert mode(tmp_path / "s.jsonl") == mode(tmp_path / "p.jsonl")
    before = os.umask(0o077)  # a umask set after import counts too
    try:
        with atomic_dir(tmp_path / "private") as d:
            (d / "f").write_text("x")
        (tmp_path / "plain_private").mkdir()
    finally:
        os.umask(before)
    assert mode(tmp_path / "private") == mode(tmp_path / "plain_private") == 0o700


def test_interrupt_dropped_in_a_finalizer_still_stops_publishing(tmp_path, monkeypatch):
    """Python drops an exception raised inside __del__ ("Exception ignored in ..."), so a Ctrl-C
    landing there would let the work finish and publish. The SIGINT handler records the signal,
    and the output is not published."""
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))  # "Exception ignored"

    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "out") as d:
            (d / "f").write_text("x")
            f = DropsACtrlC()
            del f  # KeyboardInterrupt raised and dropped inside __del__; the block goes on
            (d / "g").write_text("y")
    assert dropped == [KeyboardInterrupt]
    assert not (tmp_path / "out").exists() and names(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_ctrl_c_dropped_before_an_output_was_opened_stops_its_publishing(tmp_path, monkeypatch):
    """A command records signals from its start: one dropped before any output was opened (while a
    model loads) still keeps every output of the command from being published, files included."""
    from rcond.atomic import interrupt_recorded, raise_if_interrupted, recording_interrupts
    from rcond.sample import write_jsonl_atomic

    monkeypatch.setattr(sys, "unraisablehook", lambda u: None)
    with recording_interrupts():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        DropsACtrlC()  # dropped: the work goes on
        assert interrupt_recorded()
        with pytest.raises(KeyboardInterrupt):
            with atomic_dir(tmp_path / "out") as d:  # nested: shares the command's record
                (d / "f").write_text("x")
        with pytest.raises(KeyboardInterrupt):
            write_jsonl_atomic(tmp_path / "s.jsonl", [{"a": 1}])
        with pytest.raises(KeyboardInterrupt, match="signal 2"):
            raise_if_interrupted()
    assert names(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and not interrupt_recorded()
    with atomic_dir(tmp_path / "out") as d:  # the next command starts with an empty record
        (d / "f").write_text("x")
    assert names(tmp_path) == ["out"]


def _frame_in(filename: str):
    """A frame whose code says it comes from ``filename`` (as a signal handler is given the frame
    the signal met)."""
    ns: dict = {}
    exec(compile("import sys\nframe = sys._getframe()", filename, "exec"), ns)
    return ns["frame"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("where", ["<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>"])
def test_a_signal_inside_the_import_machinery_is_raised_a_moment_later(sig, where):
    """importlib takes the import lock before the try that releases it; a KeyboardInterrupt raised
    between the two left the lock held and the command's other threads hung at their next import
    (a Ctrl-C during `--tokenizer train:8192` once did). Met there, the signal is recorded and
    sent again a moment later, and raised where it then meets the main thread; recorded once."""
    from rcond.atomic import interrupt_recorded, recording_interrupts

    with recording_interrupts():
        try:
            signal.getsignal(sig)(sig, _frame_in(where))
        except KeyboardInterrupt:
            pytest.fail("the KeyboardInterrupt was raised inside importlib's code")
        assert interrupt_recorded()
        with pytest.raises(KeyboardInterrupt, match=f"signal {int(sig)}"):
            for _ in range(200):  # the signal sent again arrives within ~5 ms
                time.sleep(0.01)
        assert atomic._recorded == [sig]
        with pytest.raises(KeyboardInterrupt):  # anywhere else, at once
            signal.getsignal(sig)(sig, _frame_in(__file__))
        assert atomic._recorded == [sig, sig]


def test_a_signal_put_off_after_its_recording_ended_is_not_sent_again():
    """A signal put off inside the import machinery just as the command's recording ends is not
    sent again to a process whose handlers are the defaults again (SIGTERM would kill it)."""
    code = ("import signal, sys, time\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "from test_atomic import _frame_in\n"
            "from rcond.atomic import recording_interrupts, interrupt_recorded\n"
            "with recording_interrupts():\n"
            "    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, _frame_in('<frozen importlib._bootstrap>'))\n"
            "    assert interrupt_recorded()\n"
            "time.sleep(0.2)\n"
            "print('alive')\n")
    run = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert (run.returncode, run.stdout, run.stderr) == (0, "alive\n", "")


def test_recording_leaves_a_handler_someone_else_set_alone():
    from rcond.atomic import recording_interrupts

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with recording_interrupts():
            assert signal.getsignal(signal.SIGTERM) is mine
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupts_deferred_holds_a_signal_until_the_step_is_done(sig):
    """A signal inside a deferred step does not stop it half-way: it is raised as KeyboardInterrupt
    on leaving, and recorded for the command's later checks; the handlers are restored."""
    from rcond.atomic import interrupt_recorded, interrupts_deferred, recording_interrupts

    steps = []
    with recording_interrupts():
        before = signal.getsignal(sig)
        with pytest.raises(KeyboardInterrupt):
            with interrupts_deferred():
                os.kill(os.getpid(), sig)
                for _ in range(100):  # a handler would run here, between bytecodes
                    steps.append(len(steps))
                steps.append("finished")
        assert steps[-1] == "finished"
        assert interrupt_recorded()
        assert signal.getsignal(sig) is before
    with interrupts_deferred():  # nothing held: nothing raised
        pass


def test_a_step_that_fails_while_a_signal_is_held_raises_the_interrupt():
    """A signal held during a step that then fails (a worker start whose child the same Ctrl-C hit:
    EOFError from the forkserver) is not lost with the step's error: the KeyboardInterrupt is raised,
    the error chained to it, and the signal recorded; an error with no signal held passes as it is."""
    from rcond.atomic import interrupt_recorded, interrupts_deferred, recording_interrupts

    with recording_interrupts():
        with pytest.raises(KeyboardInterrupt) as caught:
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(100):
                    pass
                raise EOFError("unexpected EOF")
        assert isinstance(caught.value.__cause__, EOFError)
        assert interrupt_recorded()
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # recording's own is back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(EOFError):
        with interrupts_deferred():
            raise EOFError("no signal held")


def test_interrupts_deferred_leaves_a_handler_someone_else_set_alone():
    from rcond.atomic import interrupts_deferred

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):
                pass
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_overwrite_replaces_only_an_output_of_the_same_kind(tmp_path):
    """--overwrite on a folder of something else (a project's source) or on a file is refused and
    leaves it as it was; an earlier output of the kind, or an empty folder, is replaced."""
    from rcond.atomic import OutputKind

    kind = OutputKind("a widget", ("widget.json",))
    (tmp_path / "proj" / "src").mkdir(parents=True)
    (tmp_path / "proj" / "src" / "main.py").write_text("code")
    (tmp_path / "notes.txt").write_text("notes")
    for target, message in ((tmp_path / "proj", r"is not a widget \(which holds widget.json\)"),
                            (tmp_path / "notes.txt", "is a file, not a directory")):
        with pytest.raises(OutputExistsError, match=message):
            with atomic_dir(target, overwrite=True, kind=kind) as tmp:
                (tmp / "widget.json").write_text("{}")
    assert (tmp_path / "proj" / "src" / "main.py").read_text() == "code"
    assert (tmp_path / "notes.txt").read_text() == "notes"
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "empty"):  # empty, then an earlier widget
        with atomic_dir(target, overwrite=True, kind=kind) as tmp:
            (tmp / "widget.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["widget.json"]


def test_overwrite_refuses_an_earlier_output_that_holds_anything_else(tmp_path):
    """An earlier widget with a user's file (or another output) inside is refused, even with
    --overwrite, and kept whole: replacing it would delete them. The kind's extras (glob
    patterns) are its own: a widget holding them is replaced."""
    from rcond.atomic import OutputKind

    kind = OutputKind("a widget", ("widget.json", "parts/"), extras=("*.png", "log.txt"))
    old = tmp_path / "w"
    (old / "parts").mkdir(parents=True)
    for name in ("widget.json", "a.png", "log.txt", "notes.md", "zz.txt"):
        (old / name).write_text(name)
    (old / "nested").mkdir()
    (old / "nested" / "widget.json").write_text("{}")
    before = sorted(str(p.relative_to(old)) for p in old.rglob("*"))
    with pytest.raises(OutputExistsError, match=r"w holds a widget and also nested, notes\.md, zz\.txt, which a "
                                                r"widget does not hold; replacing it would delete them"):
        with atomic_dir(old, overwrite=True, kind=kind) as tmp:
            (tmp / "widget.json").write_text("new")
    assert sorted(str(p.relative_to(old)) for p in old.rglob("*")) == before
    assert kind.foreign(old) == ["nested", "notes.md", "zz.txt"]
    for name in ("notes.md", "zz.txt"):
        (old / name).unlink()
    (old / "nested" / "widget.json").unlink()
    (old / "nested").rmdir()
    (old / ".DS_Store").write_bytes(b"\0")  # a file browser's litter is no user file
    (old / "Thumbs.db").write_bytes(b"\0")
    with atomic_dir(old, overwrite=True, kind=kind) as tmp:
        (tmp / "widget.json").write_text("new")
        (tmp / "parts").mkdir()
    assert (old / "widget.json").read_text() == "new" and not (old / "a.png").exists()
    many = tmp_path / "many"
    (many / "parts").mkdir(parents=True)
    (many / "widget.json").write_text("{}")
    for i in range(7):
        (many / f"u{i}").write_text("x")
    for shown in ("u0, u1, u2, u3, u4 and 2 more", "u0, u1, u2, u3, u4 and 1 more", "u0, u1, u2, u3, u4"):
        with pytest.raises(OutputExistsError, match=rf"also {shown}, which"):  # five named, the rest counted
            with atomic_dir(many, overwrite=True, kind=kind):
                pass
        (many / sorted(kind.foreign(many))[-1]).unlink()


def test_an_output_kind_needs_its_files_as_files_and_its_folders_as_folders(tmp_path):
    """A marker is a file unless its name ends with '/': a folder named like the marker file, or a
    file named like the marker folder, does not make a folder of that kind (which --overwrite
    could then delete)."""
    from rcond.atomic import OutputKind

    kind = OutputKind("a widget", ("widget.json", "parts/"))
    cases = {"right": (("widget.json", "file"), ("parts", "dir")), "marker file is a dir": (("widget.json", "dir"),
             ("parts", "dir")), "marker dir is a file": (("widget.json", "file"), ("parts", "file")),
             "marker missing": (("widget.json", "file"),)}
    for name, entries in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for entry, what in entries:
            (folder / entry).mkdir() if what == "dir" else (folder / entry).write_text("x")
        assert kind.holds(folder) == (name == "right"), name
    assert not kind.holds(tmp_path / "right" / "widget.json")


def test_a_failed_run_removes_the_folders_it_created_and_only_those(tmp_path):
    (tmp_path / "there").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "there" / "new" / "sub" / "out"):
            raise RuntimeError("the work failed")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["there"]
    with atomic_dir(tmp_path / "there" / "new" / "out") as tmp:  # a run that succeeds keeps them
        (tmp / "f").write_text("x")
    assert (tmp_path / "there" / "new" / "out" / "f").read_text() == "x"


def test_a_long_output_name_is_not_refused_for_its_temp_sibling(tmp_path):
    """A 250-character name is a valid one; the hidden temp and trash siblings, named after it,
    must stay within the 255 bytes a name may have."""
    target = tmp_path / ("n" * 250)
    for overwrite in (False, True):  # written, then replaced
        with atomic_dir(target, overwrite=overwrite) as tmp:
            (tmp / "f").write_text(str(overwrite))
    assert (target / "f").read_text() == "True"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_name_too_long_for_the_file_system_is_refused_before_any_folder_is_made(tmp_path):
    """A 300-byte name (Linux file systems allow 255) is an OutputPathError naming its length and
    the limit, raised before the folders above it are made: nothing is left behind."""
    limit = atomic.name_max(tmp_path)
    long = "n" * (limit + 45)
    for target in (tmp_path / long, tmp_path / "made" / long / "c"):
        with pytest.raises(OutputPathError, match=rf"the name n{{24}}\.\.\. has {limit + 45} bytes; expected at "
                                                  rf"most {limit} per name on this file system"):
            with atomic_dir(target):
                pass
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / ("n" * limit)) as tmp:  # at the limit: written
        (tmp / "f").write_text("x")
    assert (tmp_path / ("n" * limit) / "f").read_text() == "x"


def test_an_output_path_that_is_not_utf8_is_refused_before_anything_is_made(tmp_path):
    """A Latin-1 byte in --out reaches Python as a surrogate; the tokenizer library cannot write
    there, so the path is refused up front, shown with the byte as written."""
    target = os.fsdecode(os.fsencode(tmp_path) + b"/out\xe9/c")
    with pytest.raises(OutputPathError, match=r"out\\xe9/c: the output path is not valid UTF-8"):
        with atomic_dir(target):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_long_utf8_name_gets_a_temp_sibling_cut_at_a_character(tmp_path):
    """A 241-byte name of two-byte characters: its temp sibling's name is cut to 200 bytes at a
    character boundary, still UTF-8 (a byte cut through 'é' made a name the tokenizer library
    could not write into)."""
    target = tmp_path / ("a" + "\u00e9" * 120)
    tmp = atomic.temp_dir_beside(target)
    tmp.name.encode("utf-8")
    tmp.rmdir()
    with atomic_dir(target) as out:
        (out / "f").write_text("x")
    assert (target / "f").read_text() == "x"


def test_a_temp_file_beside_is_hidden_writable_and_left_nowhere_when_its_mode_cannot_be_set(tmp_path, monkeypatch):
    """temp_file_beside makes the parent, a hidden ``.NAME.*.tmp`` sibling open for writing with
    open()'s mode; when giving it that mode fails, its descriptor is closed and the file removed."""
    target = tmp_path / "new" / "out.jsonl"
    fd, tmp = atomic.temp_file_beside(target)
    with os.fdopen(fd, "w") as f:
        f.write("x")
    assert tmp.parent == target.parent and tmp.name.startswith(".out.jsonl.") and tmp.suffix == ".tmp"
    assert tmp.read_text() == "x" and tmp.stat().st_mode & 0o777 == 0o666 & ~atomic._umask()
    tmp.unlink()
    opened = []
    real_mkstemp = atomic.tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        opened.append(real_mkstemp(*args, **kwargs))
        return opened[-1]

    def refuse(path):
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(atomic, "as_created", refuse)
    with pytest.raises(PermissionError):
        atomic.temp_file_beside(target)
    (fd, name), = opened
    assert list(target.parent.iterdir()) == []
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_run_holds_a_lock_beside_its_temp_dir_and_leaves_none(tmp_path):
    """While a run lives, a lock file beside its temp dir names this machine and is held; after
    it, neither is left."""
    import fcntl

    with atomic_dir(tmp_path / "out") as tmp:
        lock = tmp.with_name(tmp.name + ".lock")
        assert lock.read_text().split("\n")[:2] == [atomic._machine(), str(os.getpid())]
        with open(lock) as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert names(tmp_path) == ["out"]


def test_a_killed_runs_temp_dir_is_removed_by_the_next_run(tmp_path):
    """SIGKILL cannot be caught: the killed run's temp dir and lock file stay. Its lock went with
    the process, so the next run for the same output removes them, and only them."""
    import subprocess

    code = ("import sys, time; from rcond.atomic import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n"
            "    (tmp / 'half.bin').write_bytes(b'x' * 1000); print(tmp, flush=True); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    left = child.stdout.readline().strip()
    (tmp_path / ".other.tmp-keep").mkdir()  # another output's: not this one's to remove
    child.kill()
    child.wait()
    assert sorted(names(tmp_path)) == sorted([os.path.basename(left), os.path.basename(left) + ".lock",
                                              ".other.tmp-keep"])
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("1")
    assert names(tmp_path) == [".other.tmp-keep", "out"]


def test_a_temp_dir_whose_lock_is_held_or_from_another_machine_is_kept(tmp_path):
    """A lock someone holds is a live run's; a lock file another machine wrote may be held there
    (a network file system may lock per machine); a temp dir without a lock file may be an older
    rcond's run: all three are kept."""
    import fcntl

    def leftover(name, machine):
        (tmp_path / name).mkdir()
        (tmp_path / f"{name}.lock").write_text(f"{machine}\n1\n")

    leftover(".out.tmp-held", atomic._machine())
    leftover(".out.tmp-there", "another-machine")
    (tmp_path / ".out.tmp-nolock").mkdir()
    with open(tmp_path / ".out.tmp-held.lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert atomic.remove_leftovers(tmp_path / "out") == []
    assert atomic.remove_leftovers(tmp_path / "out") == [tmp_path / ".out.tmp-held"]  # let go: removed now
    assert names(tmp_path) == [".out.tmp-nolock", ".out.tmp-there", ".out.tmp-there.lock"]


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open descriptors in /proc")
def test_runs_and_the_removal_of_leftovers_leave_no_descriptor_open(tmp_path):
    """Each run opens its lock file, and the removal of leftovers opens every lock file beside the
    target: all are closed again, published or failed, removed or kept (a command writing many
    outputs, or a long-lived process, would otherwise run out of descriptors)."""
    import fcntl

    def leftover(name, machine):
        (tmp_path / name).mkdir()
        (tmp_path / f"{name}.lock").write_text(f"{machine}\n1\n")

    leftover(".out.tmp-dead", atomic._machine())
    leftover(".out.tmp-there", "another-machine")
    leftover(".out.tmp-held", atomic._machine())
    with open(tmp_path / ".out.tmp-held.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        before = _open_fds()
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
        with pytest.raises(RuntimeError):
            with atomic_dir(tmp_path / "other"):
                raise RuntimeError("the work failed")
        assert _open_fds() == before
    assert names(tmp_path) == [".out.tmp-held", ".out.tmp-held.lock", ".out.tmp-there", ".out.tmp-there.lock", "out"]


def test_a_dead_runs_leftover_of_another_output_is_not_removed(tmp_path):
    """Only the leftovers of the output being written are this run's to remove: a killed run's
    temp dir for another output beside it (``.other.tmp-*``, its lock free) stays for that output's
    next run, as does one for a name that merely starts like this one (``.out2.tmp-*``)."""
    for name in (".other.tmp-dead", ".out2.tmp-dead", ".out.tmp-dead"):
        (tmp_path / name).mkdir()
        (tmp_path / f"{name}.lock").write_text(f"{atomic._machine()}\n1\n")
    assert atomic.remove_leftovers(tmp_path / "out") == [tmp_path / ".out.tmp-dead"]
    assert names(tmp_path) == [".other.tmp-dead", ".other.tmp-dead.lock", ".out2.tmp-dead", ".out2.tmp-dead.lock"]


def test_a_leftover_that_cannot_be_removed_keeps_its_lock_file_for_a_later_try(tmp_path, monkeypatch):
    """A dead run's temp dir that cannot be removed now (a file in it held open on another system,
    say) keeps its lock file: without it, no later run would know the dir to be a dead run's, and
    it would stay for good. The next try, once removal works, takes both."""
    (tmp_path / ".out.tmp-dead").mkdir()
    (tmp_path / ".out.tmp-dead" / "half.bin").write_bytes(b"x")
    (tmp_path / ".out.tmp-dead.lock").write_text(f"{atomic._machine()}\n1\n")
    real = atomic.shutil.rmtree
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda path, ignore_errors=False: None)  # removes nothing
    assert atomic.remove_leftovers(tmp_path / "out") == []
    assert names(tmp_path) == [".out.tmp-dead", ".out.tmp-dead.lock"]
    monkeypatch.setattr(atomic.shutil, "rmtree", real)
    assert atomic.remove_leftovers(tmp_path / "out") == [tmp_path / ".out.tmp-dead"]
    assert names(tmp_path) == []


def test_a_lock_that_cannot_be_taken_leaves_nothing(tmp_path, monkeypatch):
    """A file system that refuses locks (some network ones): the run fails before its work, and
    leaves no temp dir, no lock file or its staging copy, and no folder it made."""
    import fcntl

    def refuse(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    with pytest.raises(OSError, match="No locks available"):
        with atomic_dir(tmp_path / "made" / "out"):
            pytest.fail("the work must not start")
    assert names(tmp_path) == []


@pytest.mark.parametrize("fails", ["temp dir", "lock file"])
def test_a_path_too_long_for_the_temp_dir_or_its_lock_removes_the_folders_made(tmp_path, fails):
    """Every name is short enough, and the output's own path is within the system's limit on a
    whole path, but the hidden temp dir's, or its lock file's, is not (each name is longer than
    the output's): the run fails before the work, and the folder it made for the output is
    removed again, with nothing of the temp dir or the lock left."""
    limit = os.pathconf(tmp_path, "PC_PATH_MAX")  # 4096 on Linux, the terminating NUL included
    deep = tmp_path
    while len(str(deep)) + 2 * 201 + 40 < limit:
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    made = deep / ("n" * 200)
    room = limit - len(str(made)) - 1  # the characters a name in `made` may have before its path is too long
    # the temp dir is ".NAME.tmp-XXXXXXXX" (NAME + 14), its lock's staging name that + ".lk-XXXXXXXX" (+ 12 more)
    name = "o" * (room - 10 if fails == "temp dir" else room - 20)
    with pytest.raises(OSError, match="too long"):
        with atomic_dir(made / name):
            pytest.fail("the work must not start")
    assert not made.exists() and names(deep) == []


def test_an_existing_empty_folder_is_written_into_without_overwrite(tmp_path):
    """An empty folder (made beforehand, say by a script) is no earlier output: it takes the output
    without --overwrite, as the README's 'refused unless empty' says."""
    (tmp_path / "out").mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("x")
    assert names(tmp_path / "out") == ["f"] and names(tmp_path) == ["out"]


def test_a_dangling_link_at_the_target_is_refused_and_kept(tmp_path):
    """A symbolic link whose target is gone 'does not exist' to Path.exists, but a rename onto it
    would fail (or replace the link): it is refused as something that is not a folder, before the
    work, and left as it was."""
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match=f"^{tmp_path / 'out'} is a file, not a directory"):
            with atomic_dir(tmp_path / "out", overwrite=overwrite):
                pytest.fail("the work must not start")
    assert (tmp_path / "out").is_symlink() and names(tmp_path) == ["out"]


def test_a_blank_output_path_is_refused_as_empty(tmp_path, monkeypatch):
    """``--out " "`` (a stray space from a script's variable) is as empty as ``--out ""``: refused,
    not a folder named by a space made in the current directory."""
    monkeypatch.chdir(tmp_path)
    for target in (" ", "  \t"):
        with pytest.raises(OutputPathError, match="^the output path is empty"):
            with atomic_dir(target):
                pytest.fail("the work must not start")
    assert names(tmp_path) == []


def test_every_input_is_kept_and_a_missing_one_or_a_hub_id_is_not_in_the_way(tmp_path, monkeypatch):
    """The second of two inputs inside the output folder is refused as much as the first; an input
    that is no file here (a hub id owner/name, a missing file) holds nothing to delete, so an output
    folder named like its first part is written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text("a")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "b.jsonl").write_text("b")
    with pytest.raises(OutputPathError, match="^data: holds the input data/b.jsonl"):
        with atomic_dir("data", overwrite=True, keep=("a.jsonl", "data/b.jsonl")):
            pytest.fail("the work must not start")
    assert (tmp_path / "data" / "b.jsonl").read_text() == "b"
    with atomic_dir("owner", keep=("owner/name", "owner/missing.jsonl")) as tmp:
        (tmp / "f").write_text("x")
    assert names(tmp_path) == ["a.jsonl", "data", "owner"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_in_the_way_is_named_as_what_blocks_the_output(tmp_path):
    """Not only a regular file: any entry that is not a folder (here a named pipe) where the
    output's folder must be is named as what is in the way."""
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OutputPathError, match=f"cannot create the output there: {tmp_path / 'pipe'} is a file, not"):
        with atomic_dir(tmp_path / "pipe" / "out"):
            pytest.fail("the work must not start")
    assert names(tmp_path) == ["pipe"]


def test_the_old_output_is_moved_aside_beside_it(tmp_path, monkeypatch):
    """When replacing, the old output is renamed into a hidden ``.out.old-*`` folder beside it, on
    the same file system (a rename into the system's temp folder fails across file systems), and
    that folder is gone afterwards."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    real, moves = os.replace, []

    def replace(src, dst):
        moves.append((Path(src), Path(dst)))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with atomic_dir(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    aside = [dst for src, dst in moves if src == tmp_path / "out"]
    assert len(aside) == 1 and aside[0].name == "old" and aside[0].parent.parent == tmp_path
    assert aside[0].parent.name.startswith(".out.old-")
    assert names(tmp_path) == ["out"] and names(tmp_path / "out") == ["new.txt"]


def test_the_outputs_a_command_published_are_all_named_overwrite_or_not(tmp_path):
    """What the interrupted command's last words name as written in full: every output put in
    place since the command began, a replaced one too; the next command starts with none."""
    from rcond.atomic import outputs_published, recording_interrupts

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old").write_text("old")
    with recording_interrupts():
        for target, overwrite in ((tmp_path / "a", False), (tmp_path / "b", True)):
            with atomic_dir(target, overwrite=overwrite) as tmp:
                (tmp / "f").write_text("x")
        assert outputs_published() == [tmp_path / "a", tmp_path / "b"]
    with recording_interrupts():
        assert outputs_published() == []


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_in_place_when_a_signal_lands_counts_as_published(tmp_path, monkeypatch, overwrite):
    """A Ctrl-C at the end of the rename that puts the output in place: the output stays, and is
    named as written (the command's message must not say no output was written)."""
    from rcond.atomic import outputs_published, recording_interrupts

    if overwrite:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "old.txt").write_text("old")
    real, target = os.replace, tmp_path / "out"

    def replace(src, dst):
        real(src, dst)
        if Path(dst) == target:  # the new output is in place: a Ctrl-C arrives as the rename ends
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with recording_interrupts():
        with pytest.raises(KeyboardInterrupt):
            with atomic_dir(target, overwrite=overwrite) as tmp:
                (tmp / "new.txt").write_text("new")
        assert outputs_published() == [target]
    assert names(target) == ["new.txt"] and names(tmp_path) == ["out"]


def test_an_output_is_written_from_a_thread_other_than_the_main_one(tmp_path):
    """Only the main thread may set signal handlers: from another thread (a server's worker, a
    notebook's background job) no handler is set, and the output is written all the same."""
    import threading

    errors = []

    def work():
        try:
            with atomic_dir(tmp_path / "out") as tmp:
                (tmp / "f").write_text("x")
        except BaseException as e:  # noqa: BLE001 - reported below, in the main thread
            errors.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == [] and names(tmp_path / "out") == ["f"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
