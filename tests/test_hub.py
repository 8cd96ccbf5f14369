"""rcond.hub: a hub id fails at once where the hub's host name does not resolve, and a tokenizer
or model in the local hub cache still loads there. Name lookups are replaced by stand-ins, so the
tests say the same with or without a network."""

import socket
from pathlib import Path

import pytest

from conftest import word_tokenizer
from rcond import hub
from rcond.tokenizer import TokenizerError, load_tokenizer


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty local hub cache; returns a function that puts a tokenizer into it as owner/name, as
    a download leaves it: a snapshot named by the commit ``refs/main`` holds, and the model
    ``config.json`` the repo lacks marked missing under ``.no_exist``."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def put(repo_id: str):
        folder = cache / ("models--" + repo_id.replace("/", "--"))
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text("0" * 40)
        word_tokenizer().save_pretrained(folder / "snapshots" / ("0" * 40))
        (folder / ".no_exist" / ("0" * 40)).mkdir(parents=True)
        (folder / ".no_exist" / ("0" * 40) / "config.json").touch()

    return put


def test_unreachable_names_the_host_and_is_not_asked_behind_a_proxy_or_offline(no_dns, monkeypatch):
    import huggingface_hub.constants

    assert hub.unreachable() == "huggingface.co does not resolve: Name or service not known"
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org:8443/")
    assert hub.unreachable() == "hub.example.org does not resolve: Name or service not known"
    for v in hub.PROXIES:
        monkeypatch.setenv(v, "http://proxy:3128")
        assert hub.unreachable() is None
        monkeypatch.delenv(v)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1, as the client reads it
    assert hub.unreachable() is None
    assert no_dns == ["huggingface.co", "hub.example.org"]


@pytest.mark.parametrize("endpoint", ["https://[::1", "https://a..b", "hub.example.org"])
def test_an_endpoint_the_lookup_cannot_take_is_left_to_the_hub_client(hub_online, monkeypatch, endpoint):
    """No host (no scheme), or one the lookup refuses before any network (an empty label, a broken
    address): not a verdict on the network, so not checked; the real lookup runs, and asks no one."""
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert hub.unreachable() is None


def test_a_host_that_resolves_is_reachable(hub_online, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **kw: [(socket.AF_INET, 1, 6, "", ("10.0.0.1", 443))])
    assert hub.unreachable() is None
    assert hub.pretrained_kwargs("owner/name") == {}


def test_pretrained_kwargs_local_path_cached_and_missing(no_dns, hub_cache, tmp_path):
    (tmp_path / "here").mkdir()
    for spec in (tmp_path / "here", "./typo_model", "~/nowhere", "C:\\models\\tok", "a/b/c"):  # not hub ids
        assert hub.pretrained_kwargs(spec) == {}
    assert no_dns == []
    hub_cache("owner/cached")
    assert hub.pretrained_kwargs("owner/cached") == {"local_files_only": True}
    with pytest.raises(hub.HubUnreachable, match=r"^the hub cannot be reached \(huggingface.co does not resolve: "
                                                 r".*\) and owner/other is not in the local hub cache$"):
        hub.pretrained_kwargs("owner/other")


def test_any_cached_snapshot_counts_whatever_files_it_holds(no_dns, hub_cache, tmp_path):
    """A repo cached with a slow tokenizer's files only (config.json, vocab.json, merges.txt) is in
    the cache as much as one with tokenizer.json: the snapshot its main branch names is there."""
    import huggingface_hub.constants

    folder = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--owner--slow"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("1" * 40 + "\n")
    (folder / "snapshots" / ("1" * 40)).mkdir(parents=True)
    for name in ("config.json", "vocab.json", "merges.txt"):
        (folder / "snapshots" / ("1" * 40) / name).write_text("{}")
    assert hub.pretrained_kwargs("owner/slow") == {"local_files_only": True}
    (folder / "refs" / "main").write_text("2" * 40)  # a ref whose snapshot is gone: not cached
    with pytest.raises(hub.HubUnreachable):
        hub.pretrained_kwargs("owner/slow")


def test_a_tokenizer_hub_id_offline_fails_at_once_or_loads_from_the_cache(no_dns, hub_cache):
    with pytest.raises(TokenizerError, match=r"^owner/tok: not a local directory, and loading it as a hub id "
                                             r"failed: the hub cannot be reached \(huggingface.co does not resolve"):
        load_tokenizer("owner/tok")
    hub_cache("owner/tok")
    tok = load_tokenizer("owner/tok")
    assert tok.encode("a b", add_special_tokens=False) == word_tokenizer().encode("a b", add_special_tokens=False)


def test_an_endpoint_without_a_host_asks_no_lookup(no_dns, monkeypatch):
    """``HF_ENDPOINT=hub.example.org`` (no scheme) names no host: nothing is looked up (a lookup of
    no host at all would ask for this machine's own name, or fail and blame the network)."""
    monkeypatch.setenv("HF_ENDPOINT", "hub.example.org")
    assert hub.unreachable() is None
    assert no_dns == []


@pytest.mark.parametrize("spec", ["models\\tok", "D:tok", "/tok"])
def test_windows_and_absolute_paths_are_no_hub_ids(no_dns, spec):
    """A path with a backslash or a drive colon, or an absolute one (even with one slash, as
    owner/name has), is a path the user means, not a hub id: no lookup, no HubUnreachable, the
    loader says what is missing."""
    assert not hub.looks_like_hub_id(spec)
    assert hub.pretrained_kwargs(spec) == {}
    assert no_dns == []


def test_a_local_folder_named_like_a_hub_id_is_loaded_from_here(no_dns, tmp_path, monkeypatch):
    """``tok`` or ``owner/name`` that exists here is the local folder, even offline: no lookup."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok").mkdir()
    (tmp_path / "owner" / "name").mkdir(parents=True)
    for spec in ("tok", "owner/name"):
        assert hub.looks_like_hub_id(spec)
        assert hub.pretrained_kwargs(spec) == {}
    assert no_dns == []


def test_a_cache_entry_whose_ref_is_unreadable_or_names_a_file_is_not_cached(no_dns, hub_cache):
    """refs/main holding bytes that are no text, or naming a file where a snapshot folder should
    be: not a usable cached snapshot, so HubUnreachable (not a UnicodeDecodeError traceback)."""
    import huggingface_hub.constants

    folder = Path(huggingface_hub.constants.HF_HUB_CACHE) / "models--owner--odd"
    (folder / "refs").mkdir(parents=True)
    (folder / "snapshots").mkdir()
    (folder / "refs" / "main").write_bytes(b"\xff\xfe" + b"3" * 40)
    with pytest.raises(hub.HubUnreachable, match="owner/odd is not in the local hub cache"):
        hub.pretrained_kwargs("owner/odd")
    (folder / "refs" / "main").write_text("3" * 40)
    (folder / "snapshots" / ("3" * 40)).write_text("not a folder")
    with pytest.raises(hub.HubUnreachable, match="owner/odd is not in the local hub cache"):
        hub.pretrained_kwargs("owner/odd")


def test_local_or_id_expands_the_home_directory_only_for_what_exists(tmp_path, monkeypatch):
    """A path under '~' that exists is handed on expanded; anything else (a hub id, a missing
    path) as given, for from_pretrained to report."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m").mkdir()
    assert hub.local_or_id("~/m") == str(tmp_path / "m")
    assert hub.local_or_id(Path("~/m")) == str(tmp_path / "m")
    assert hub.local_or_id("~/missing") == "~/missing"
    assert hub.local_or_id("org/model") == "org/model"
