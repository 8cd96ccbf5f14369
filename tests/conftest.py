"""Shared fixtures: a word-level tokenizer whose token ids can be computed by hand, whether a process
still runs (and the processes below one), a call that must end within a time (:func:`within`), and the location of the real test data (tests that need it skip when ../shared/data is
absent).

The tests of Ctrl-C send SIGINT to this process and to the rcond commands it starts. A shell
starts a background job (``make test &``) with SIGINT ignored, and every process started from it
inherits that, so rcond would rightly ignore those Ctrl-Cs; the suite gives itself Python's
normal SIGINT handler first, which its children then start with as usual.
"""

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WORDS = ["<eos>", "a", "b", "c", "d", "e", "f", "g", "h"]


def word_tokenizer(eos_token="<eos>", pad_token="<eos>"):
    """One token per whitespace-separated word: 'a' -> 1, 'b' -> 2, ...; eos = pad = 0 (None: no
    such token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, pad_token=pad_token)


@pytest.fixture
def wtok():
    return word_tokenizer()


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"test data folder {SHARED_DATA} is absent")
    return SHARED_DATA


class DropsACtrlC:
    """An object whose finalizer receives a Ctrl-C: Python drops the KeyboardInterrupt raised there
    and only reports "Exception ignored" (as it did inside the `regex` module's Group.__del__).
    Create one and let it go; silence the report with ``sys.unraisablehook``."""

    def __del__(self):
        import signal

        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)


@pytest.fixture
def hub_online(monkeypatch):
    """The hub client as on a plain machine: no proxy, no HF_ENDPOINT, not in offline mode
    (whatever the environment running the tests sets), so rcond.hub asks its name lookup."""
    import huggingface_hub.constants

    from rcond import hub

    for v in (*hub.PROXIES, "HF_ENDPOINT"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def no_dns(hub_online, monkeypatch):
    """Every name lookup fails as it does on a machine without a network; returns the hosts asked."""
    import socket

    asked = []

    def lookup(host, port, *a, **kw):
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    return asked


def write_jsonl(path: Path, rows) -> Path:
    import json

    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an exited process its parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def ctrl_c_after_each_process_start(monkeypatch):
    """Every multiprocessing start sends this process a SIGINT the moment the child exists, before
    the caller can record it; yields the pids started, and kills any still running afterwards."""
    import multiprocessing.process
    import time

    started: list[int] = []
    start = multiprocessing.process.BaseProcess.start

    def start_then_ctrl_c(self):
        start(self)
        started.append(self.pid)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs now, before the caller records the child

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start_then_ctrl_c)
    yield started
    for pid in started:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def outlived(pids, seconds: float = 10.0) -> list[int]:
    """The pids still running after up to ``seconds`` of waiting for them to exit."""
    import time

    deadline = time.time() + seconds
    left = [pid for pid in pids if running(pid)]
    while left and time.time() < deadline:
        time.sleep(0.1)
        left = [pid for pid in left if running(pid)]
    return left


def descendants(root: int) -> set[int]:
    """Every process below ``root`` (children, their children, ...), from /proc."""
    parents = {int(p): parent_of(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


@pytest.fixture(autouse=True)
def import_path_restored(monkeypatch):
    """A scorer file puts its folder on sys.path (and a dotted scorer the current directory); each
    test gets the path back as it found it, so no test's folder shadows a module in another."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def within(seconds, fn):
    """``fn()`` run in a thread: what it raised (None if it returned), or a failure if it was not done
    within ``seconds`` (the thread is left, a daemon)."""
    box = {}

    def run():
        try:
            fn()
        except BaseException as e:
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"not done within {seconds} s")
    return box.get("error")
