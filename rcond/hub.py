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
"""

from __future__ import annotations

import os
import socket
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
