"""The node cache of context files and the copy channel, without Parsl or an
endpoint: real files, real CurveZMQ file servers on loopback, real processes
racing for one node's lock. Each "node" is a NodeFiles with its own cache folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from faas.warm_pool import fetcher
from faas.warm_pool.fetcher import CopyError
from faas.warm_pool.files import FilesSetup, NodeFiles
from faas.warm_pool.node_cache import NodeCache, new_hash

REPO = Path(__file__).resolve().parents[1]
MB = 2**20


def digest(data: bytes) -> str:
    h = new_hash()
    h.update(data)
    return h.hexdigest()


@pytest.fixture
def source(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A model folder: two files and one in a subfolder."""
    root = tmp_path / "source" / "model"
    contents = {"weights.bin": os.urandom(3 * MB), "config.json": b'{"layers": 2}',
                "tok/vocab.txt": os.urandom(64 * 1024)}
    for name, data in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root, contents


@pytest.fixture
def nodes(tmp_path):
    """node(name, **setup) -> a NodeFiles serving its own cache; all stopped after the test."""
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    made = []

    def node(name: str, **setup) -> NodeFiles:
        files = NodeFiles()
        files.attach(FilesSetup(server_public, server_secret, client_public, client_secret,
                                node_cache=str(tmp_path / name), **setup), "tcp://127.0.0.1:1")
        made.append(files)
        return files

    yield node
    for files in made:
        files.detach()


def read_tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_files_are_staged_content_addressed_and_shown_under_their_names(tmp_path, source):
    folder, contents = source
    files = NodeFiles()
    files.cache = NodeCache(tmp_path / "cache")
    local = files.stage("ctx-a", str(folder))
    assert local.name == "model" and read_tree(local) == contents
    assert files.source_bytes["ctx-a"] == sum(map(len, contents.values()))
    manifest = files.cache.manifest("ctx-a")
    assert {f.path: f.hash for f in manifest.files} == {f"0/model/{n}": digest(d) for n, d in contents.items()}
    # another context naming one of the same files (in a list) shares its blob
    single = tmp_path / "weights.bin"
    single.write_bytes(contents["weights.bin"])
    (paths,) = [files.stage("ctx-b", (str(single),))]
    assert [p.read_bytes() for p in paths] == [contents["weights.bin"]]
    blobs = [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file() and p.suffix != ".ok"]
    assert len(blobs) == 3
    # staged: a second stage reads nothing
    files.stage("ctx-a", str(folder))
    assert files.source_bytes["ctx-a"] == sum(map(len, contents.values()))
    assert files.cache.staged_keys() == ["ctx-a", "ctx-b"]


def test_a_changed_blob_is_hashed_again_before_use_and_never_loaded(tmp_path, source):
    folder, contents = source
    files = NodeFiles()
    files.cache = NodeCache(tmp_path / "cache")
    files.stage("ctx", str(folder))
    blob = files.cache.blob(digest(contents["weights.bin"]))
    before = files.source_bytes["ctx"]
    os.utime(blob)  # touched, bytes unchanged: hashed again, kept
    assert files.cache.staged("ctx") is not None
    assert files.cache.looks_intact(blob.name)
    blob.chmod(0o600)
    with open(blob, "r+b") as f:  # one byte flipped
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    assert files.cache.staged("ctx") is None and not blob.exists()  # detected and removed
    local = files.stage("ctx", str(folder))  # copied again (here: from the source)
    assert read_tree(local) == contents
    assert files.source_bytes["ctx"] - before == sum(map(len, contents.values()))


def test_a_missing_source_fails_naming_its_path(tmp_path):
    files = NodeFiles()
    files.cache = NodeCache(tmp_path / "cache")
    with pytest.raises(CopyError, match=str(tmp_path / "gone")):
        files.stage("ctx", str(tmp_path / "gone"))
    assert not files.staging and files.cache.staged_keys() == []


RACER = """
import json, sys, time
from faas.warm_pool.files import NodeFiles
from faas.warm_pool.node_cache import NodeCache
files = NodeFiles()
files.cache = NodeCache(sys.argv[1])
start = time.time()
local = files.stage("ctx", sys.argv[2])
print(json.dumps({"source_bytes": files.source_bytes["ctx"], "start": start, "end": time.time(),
                  "local": str(local)}))
"""


def test_workers_of_one_node_share_one_copy(tmp_path):
    """Two processes stage the same context into one cache at once: one reads
    the source, the other waits on the node's lock and finds the files."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(48 * MB))  # long enough to overlap the two starts
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    racers = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / "cache"), str(big)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    reports = []
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert max(r["start"] for r in reports) < min(r["end"] for r in reports)  # they overlapped
    assert sorted(r["source_bytes"] for r in reports) == [0, 48 * MB]
    assert {Path(r["local"]).read_bytes() == big.read_bytes() for r in reports} == {True}


def test_a_copy_from_a_peer_is_checked_and_resumes_elsewhere_when_its_holder_goes(tmp_path, source, nodes,
                                                                                      monkeypatch):
    """B copies from A, which stops serving mid-copy: B goes on from C where it
    stopped (no byte copied twice), and from the source when no holder is left."""
    folder, _ = source
    big = folder / "weights.bin"
    big.write_bytes(os.urandom(8 * MB))
    contents = read_tree(folder)
    total = sum(map(len, contents.values()))
    monkeypatch.setattr(fetcher, "CHUNK", 256 * 1024)
    a, c = nodes("a", serve_bandwidth=4 * MB), nodes("c", serve_bandwidth=4 * MB)
    a.stage("ctx", str(folder))
    c.stage("ctx", str(folder))
    assert a.source_bytes["ctx"] == c.source_bytes["ctx"] == total  # (both read it here, to have two holders)
    b = nodes("b")
    b.hint({"ctx": [a.server.address, c.server.address]})
    result = {}
    copier = threading.Thread(target=lambda: result.update(local=b.stage("ctx", str(folder))))
    copier.start()
    deadline = time.monotonic() + 10
    while b.peer_bytes["ctx"] < MB:
        assert time.monotonic() < deadline, "the copy did not start"
        time.sleep(0.01)
    a.detach()  # its holder goes mid-copy
    copier.join(30)
    assert read_tree(result["local"]) == contents
    assert b.peer_bytes["ctx"] == total and b.source_bytes["ctx"] == 0
    # the last holder goes too, mid-copy: d goes on from the source
    d = nodes("d")
    d.hint({"ctx": [c.server.address]})
    result.clear()
    copier = threading.Thread(target=lambda: result.update(local=d.stage("ctx", str(folder))))
    copier.start()
    while d.peer_bytes["ctx"] < MB:
        time.sleep(0.01)
    c.detach()
    copier.join(30)
    assert read_tree(result["local"]) == contents
    assert d.peer_bytes["ctx"] + d.source_bytes["ctx"] == total and d.source_bytes["ctx"] > 0


def test_a_peer_whose_copy_does_not_match_is_never_used(tmp_path, source, nodes):
    """A holder whose blob had a byte flipped with its mtime kept (so its own
    stat check cannot see it): the fetcher's hash check does, copies the file
    again from another holder, and the holder, told, hashes its blob and drops it."""
    folder, contents = source
    a, c = nodes("a"), nodes("c")
    a.stage("ctx", str(folder))
    c.stage("ctx", str(folder))
    blob = a.cache.blob(digest(contents["weights.bin"]))
    st = blob.stat()
    blob.chmod(0o600)
    with open(blob, "r+b") as f:
        f.seek(5)
        byte = f.read(1)
        f.seek(5)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    blob.chmod(0o400)
    b = nodes("b")
    b.hint({"ctx": [a.server.address, c.server.address]})
    local = b.stage("ctx", str(folder))
    assert read_tree(local) == contents
    assert b.peer_bytes["ctx"] > sum(map(len, contents.values()))  # the bad file was copied again
    deadline = time.monotonic() + 10
    while blob.exists() or "ctx" in a.staged:
        assert time.monotonic() < deadline, "the holder kept its bad copy"
        time.sleep(0.05)


def test_a_holder_serves_a_bounded_number_of_copies(tmp_path, source, nodes):
    folder, _ = source
    a = nodes("a", max_serving=1)
    a.stage("ctx", str(folder))
    keys = a.setup
    peer = fetcher.Peer(zmq.Context.instance(), a.server.address,
                        (keys.server_public, keys.client_public, keys.client_secret))
    try:
        first = peer.ask(5, op="open", key="ctx")
        assert first["status"] == "ok" and a.server.serving == 1
        assert peer.ask(5, op="open", key="ctx")["status"] == "busy"
        assert peer.ask(5, op="open", key="other")["status"] == "none"
        assert peer.ask(5, op="close", session=first["session"])["status"] == "ok"
        assert peer.ask(5, op="open", key="ctx")["status"] == "ok"
    finally:
        peer.close()
    # a client without the fetchers' key is not let in
    public, secret = zmq.curve_keypair()
    stranger = fetcher.Peer(zmq.Context.instance(), a.server.address, (keys.server_public, public, secret))
    try:
        with pytest.raises(fetcher.PeerFailed):
            stranger.ask(2, op="open", key="ctx")
    finally:
        stranger.close()


def test_without_peer_copy_a_node_serves_nothing_and_reads_the_source(source, nodes):
    folder, contents = source
    a = nodes("a")
    a.stage("ctx", str(folder))
    b = nodes("b", peer_copy=False)
    assert b.server is None and b.state().address is None
    b.hint({"ctx": [a.server.address]})
    assert read_tree(b.stage("ctx", str(folder))) == contents
    assert b.peer_bytes["ctx"] == 0 and b.source_bytes["ctx"] == sum(map(len, contents.values()))
