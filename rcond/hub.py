"""Whether the Hugging Face hub can be reached from here, so that a hub id fails at once offline.

When the hub's host name does not resolve (no network, no DNS), the hub client retries for 30–50 s
before it says so, for a hub id that a user may only have mistyped as a local path. A name lookup
answers the same question in milliseconds. It is not asked behind a proxy (which may resolve names
this machine cannot) nor in the hub client's offline mode (``HF_HUB_OFFLINE=1``: it then fails at
once by itself).
``HF_ENDPOINT`` names the host to look up, as it names the hub for the client.

A dataset streamed from the hub needs the network whatever is cached; a tokenizer or a model may
come from the local hub cache, so :func:`pretrained_kwargs` loads a cached one with
``local_files_only`` instead of refusing it.

An input names a hub dataset as ``OWNER/NAME[@REVISION][/FOLDER...][:SPLIT | :CONFIG:SPLIT]``
(:func:`parse_dataset_id`): a folder of the repository is ``datasets``' ``data_dir`` (the subsets
of ``Anthropic/hh-rlhf`` are folders: ``Anthropic/hh-rlhf/harmless-base:test``), a revision a
branch, tag or commit (``refs/convert/parquet`` and ``refs/pr/N`` too). The revision is resolved
to its commit once (:func:`dataset_commit`): the rows are streamed at that commit and the corpus
records it, so a corpus names the very data it was built from, whatever the branch holds later.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class HubUnreachable(OSError):
    """A hub id that must be fetched, on a machine that cannot reach the hub."""


def unreachable() -> str | None:
    """Why the hub cannot be reached from here (its host name does not resolve), or None: it
    resolves, or the question is not asked here (a proxy, the hub client's offline mode, an
    ``HF_ENDPOINT`` that names no host the lookup can take: the client then says what is wrong)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in PROXIES):
        return None
    try:
        host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
        if host:
            socket.getaddrinfo(host, 443)
    except socket.gaierror as e:
        return f"{host} does not resolve: {e.strerror or e}"
    except (ValueError, UnicodeError):  # "https://[::1", "https://a..b"
        return None
    return None


def looks_like_hub_id(spec: str) -> bool:
    """``name`` or ``owner/name``: not a path (absolute, relative to here or home, Windows-style)."""
    return (not spec.startswith(("/", ".", "~")) and "\\" not in spec and ":" not in spec
            and 0 < len(spec) and spec.count("/") <= 1)


def _cached(repo_id: str) -> bool:
    """The local hub cache holds a snapshot of ``repo_id`` (a model or tokenizer repo) at the
    commit its ``main`` branch pointed to when it was downloaded."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = folder / "refs" / "main"
    try:
        return ref.is_file() and (folder / "snapshots" / ref.read_text().strip()).is_dir()
    except (OSError, ValueError):
        return False


def local_or_id(spec: str | os.PathLike) -> str:
    """What to hand ``from_pretrained``: the local path with ``~`` expanded where it exists (the
    shell leaves the ``~`` in ``--model=~/m``, and transformers reads ``~/m`` as a hub id), else
    ``spec`` as given."""
    local = Path(spec).expanduser()
    return str(local) if local.exists() else str(spec)


def pretrained_kwargs(spec: str | os.PathLike) -> dict:
    """Extra keyword arguments for ``from_pretrained(spec)``: none for a local path, for what is
    no hub id, or when the hub can be reached; ``local_files_only`` when it cannot but the local
    hub cache holds ``spec``. Raises :class:`HubUnreachable` when it can be neither fetched nor
    found in the cache."""
    if Path(spec).expanduser().exists() or not looks_like_hub_id(str(spec)):
        return {}
    why = unreachable()
    if why is None:
        return {}
    if _cached(str(spec)):
        return {"local_files_only": True}
    raise HubUnreachable(f"the hub cannot be reached ({why}) and {spec} is not in the local hub cache")


@dataclass(frozen=True)
class DatasetId:
    """A hub dataset as an input names it (:func:`parse_dataset_id`)."""

    repo: str                   # OWNER/NAME
    revision: str | None        # a branch, tag or commit; None: the default branch
    folder: str | None          # the repository's folder to read (datasets' data_dir); None: all of it
    config: str | None          # the dataset's configuration (datasets' name); None: its default
    split: str                  # "train" unless named

    def name(self, commit: str) -> str:
        """The dataset as read at ``commit``, in the input's own notation."""
        tail = ":".join(part for part in (self.config, self.split) if part is not None)
        return f"{self.repo}@{commit}" + (f"/{self.folder}" if self.folder else "") + f":{tail}"


DATASET_ID = "OWNER/NAME[@REVISION][/FOLDER...][:SPLIT | :CONFIG:SPLIT]"


def parse_dataset_id(spec: str) -> DatasetId:
    """``OWNER/NAME[@REVISION][/FOLDER...][:SPLIT | :CONFIG:SPLIT]`` -> its parts; ValueError, saying
    what is expected, for an empty part, a folder ``.`` or ``..``, or more than two ``:``."""
    path, *tail = spec.split(":")
    parts = path.split("/")
    owner, name = parts[0], parts[1] if len(parts) > 1 else ""
    name, at, revision = name.partition("@")
    rest = parts[2:]
    if revision == "refs" and len(rest) >= 2:  # refs/pr/1, refs/convert/parquet: a revision with slashes
        revision, rest = "/".join(["refs", *rest[:2]]), rest[2:]
    problem = ("more than two ':'" if len(tail) > 2 else
               "an empty owner, name, folder, configuration or split" if not all([owner, name, *rest, *tail]) else
               "an empty revision after '@'" if at and not revision else
               "a folder '.' or '..'" if {".", ".."} & set(rest) else None)
    if problem:
        raise ValueError(f"not a hub dataset id ({problem}): expected {DATASET_ID}")
    return DatasetId(repo=f"{owner}/{name}", revision=revision or None, folder="/".join(rest) or None,
                     config=tail[0] if len(tail) == 2 else None, split=tail[-1] if tail else "train")


_commits: dict[tuple[str, str | None], str] = {}  # (repo, revision) -> commit, for this process
_commits_lock = threading.Lock()


def dataset_commit(repo: str, revision: str | None) -> str:
    """The commit a dataset repository's ``revision`` (None: its default branch) points to now,
    asked of the hub once per process: the first caller asks while any other waits, so a build's
    reading and its background fingerprinting get the same commit even if the branch moves."""
    with _commits_lock:
        if (repo, revision) not in _commits:
            from huggingface_hub import HfApi

            _commits[repo, revision] = HfApi().dataset_info(repo, revision=revision).sha
        return _commits[repo, revision]


def request_errors() -> tuple[type[BaseException], ...]:
    """What a call to the hub may raise when it fails: OSError (the hub client's HTTP errors, a
    repository or revision not found, offline mode), ValueError, and the base error of the HTTP
    library the hub client uses, which a failed connection raises and which is no OSError."""
    from huggingface_hub.errors import HfHubHTTPError

    return (OSError, ValueError, *(b for b in HfHubHTTPError.__bases__ if not issubclass(b, OSError)))
