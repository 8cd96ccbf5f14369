"""Whether the Hugging Face hub can be reached from here, so that a hub id fails at once offline.

When the hub's host name does not resolve (no network, no DNS), the hub client retries for 30–50 s
before it says so, for a hub id that a user may only have mistyped as a local path. A name lookup
answers the same question in milliseconds. It is not asked behind a proxy (which may resolve names
this machine cannot) nor with ``HF_HUB_OFFLINE`` set (the client then fails at once by itself).
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

NO_CHECK = ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class HubUnreachable(OSError):
    """A hub id that must be fetched, on a machine that cannot reach the hub."""


def unreachable() -> str | None:
    """Why the hub cannot be reached from here (its host name does not resolve), or None: it
    resolves, or the question is not asked here (a proxy, ``HF_HUB_OFFLINE``)."""
    if any(os.environ.get(v) for v in NO_CHECK):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, 443)
    except socket.gaierror as e:
        return f"{host} does not resolve: {e.strerror or e}"
    return None


def _cached(repo_id: str, filename: str) -> bool:
    """``filename`` of the hub repo ``repo_id`` is in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # a name that is no valid repo id is in no cache
        return False


def pretrained_kwargs(spec: str | os.PathLike, *filenames: str) -> dict:
    """Extra keyword arguments for ``from_pretrained(spec)``: none for a local path or when the
    hub can be reached; ``local_files_only`` when it cannot but one of ``filenames`` of ``spec``
    is cached. Raises :class:`HubUnreachable` when it can be neither fetched nor found in the cache."""
    if Path(spec).expanduser().exists():
        return {}
    why = unreachable()
    if why is None:
        return {}
    if any(_cached(str(spec), name) for name in filenames):
        return {"local_files_only": True}
    raise HubUnreachable(f"the hub cannot be reached ({why}) and {spec} is not in the local hub cache")
