"""Context files on real workers: four worker processes of one endpoint, each
its own node (warm_pool.node_cache_per_worker), stage a context's files from
its source once and copy them from each other; a holder SIGKILLed mid-copy, a
byte flipped in a holder's cache and a source that is gone. The loader reads
every byte it is given and returns the files' checksums, so a bad copy would
show in the results. Figures (times, bytes) are printed (-s)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
from conftest import RunningEndpoint, local_config, write_config

from faas import Executor, ctx_function
from faas.endpoint import daemon
from faas.errors import ContextInitError
from faas.home import EndpointDir
from faas.store import Store, sqlite_url
from faas.store.report import build_report

NAME = "files"
MB = 10**6
BANDWIDTH = 100 * MB  # what each worker serves in all: copies last long enough to be caught mid-way


def checksums(files):
    """The loader: reads every file it was given."""
    out = {}
    for path in sorted(Path(files).iterdir()):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        out[path.name] = h.hexdigest()
    return out


def who(ctx, seconds):
    time.sleep(seconds)
    return os.getpid(), ctx


def write_source(folder: Path, files: int, size: int) -> dict[str, str]:
    folder.mkdir(parents=True)
    expected = {}
    for i in range(files):
        data = os.urandom(size)
        (folder / f"part-{i}.bin").write_bytes(data)
        expected[f"part-{i}.bin"] = hashlib.sha256(data).hexdigest()
    return expected


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """One endpoint with four workers, each its own node, for the module's cases."""
    home, data = tmp_path_factory.mktemp("faas-home"), tmp_path_factory.mktemp("context-files")
    extra = (f"warm_pool:\n  node_cache: {data / 'caches'}\n  node_cache_per_worker: true\n  max_serving: 2\n"
             f"  serve_bandwidth: {BANDWIDTH}\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAAS_HOME", str(home))
        config = local_config(workers=4, extra=extra).replace(  # four on a two-core machine too
            "max_workers_per_node: 4\n", "max_workers_per_node: 4\n  cores_per_worker: 0.25\n")
        write_config(home, NAME, config)
        ep = RunningEndpoint(home, NAME)
        ep.start()
        try:
            yield ep, data
        finally:
            ep.stop()
            shutil.rmtree(data, ignore_errors=True)


def live() -> dict:
    return daemon.request(EndpointDir.of(NAME).address, "status", timeout=10)["status"]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        st = live()
        if (found := check(st)) is not None and found is not False:
            return found
        assert time.monotonic() < deadline, f"no {what} within {timeout:g}s: {json.dumps(st['worker_files'])}"
        time.sleep(0.05)


def four_idle_workers() -> dict:
    return wait_for(lambda st: st if len(st["worker_files"]) == 4 and not st["backlog"]
                    and not st["batches_in_flight"] else None, 90, "four idle workers")


def totals(fn, ep: RunningEndpoint) -> tuple[int, int]:
    """Bytes of the context's files read from the source and copied from peers by every worker
    that ever ran, as ``report`` gives them (from the store: killed workers' too)."""
    store = Store(sqlite_url(ep.path))
    try:
        figures = build_report(store).contexts[fn.context_description]
    finally:
        store.close()
    return figures.source_bytes, figures.peer_bytes


def fresh_context(place, name: str, files: int, size: int):
    """A context over new random files at the source, once the four workers are idle:
    (the endpoint, the function, the files' checksums, their bytes)."""
    ep, data = place
    expected = write_source(data / name, files, size)
    four_idle_workers()
    return ep, ctx_function(model=checksums, files=str(data / name))(who), expected, files * size


def test_the_source_is_read_once_and_the_files_copied_from_peers(place):
    ep, fn, expected, size = fresh_context(place, "model-a", 4, 50 * MB)
    started = time.monotonic()
    with Executor(endpoint=NAME) as ex:
        results = list(ex.map(fn, [0.0] * 16, timeout=120))
    seconds = time.monotonic() - started
    assert all(ctx == expected for _, ctx in results)
    assert len({pid for pid, _ in results}) == 4, "each worker should have loaded the context"
    workers = live()["worker_files"]
    key = fn.context_key
    source = {w: f["source_bytes"].get(key, 0) for w, f in workers.items()}
    peers = {w: f["peer_bytes"].get(key, 0) for w, f in workers.items()}
    print(f"\n200 MB context on 4 nodes in {seconds:.1f}s: source bytes {sorted(source.values())}, "
          f"peer bytes {sorted(peers.values())}")
    assert sorted(source.values()) == [0, 0, 0, size]  # one node read the source
    assert sorted(peers.values()) == [0, size, size, size]  # the three others copied from peers
    assert all(key in f["staged"] for f in workers.values())
    assert totals(fn, ep) == (size, 3 * size)  # and report has them


def test_a_byte_flipped_in_a_holders_cache_is_never_loaded_and_copied_again(place):
    ep, fn, expected, size = fresh_context(place, "model-c", 2, 10 * MB)
    key = fn.context_key
    with Executor(endpoint=NAME) as ex:
        first_pid, first = ex.submit(fn, 0.3).result(timeout=60)  # measured: the others join for the backlog
        assert first == expected
        (holder,) = [f for f in live()["worker_files"].values() if key in f["staged"]]
        root = Path(holder["node"].split(":", 1)[1])
        digest = json.loads((root / "contexts" / f"{key}.json").read_text())["files"][0]["hash"]
        blob = root / "blobs" / digest[:2] / digest
        blob.chmod(0o600)
        with open(blob, "r+b") as f:  # one byte flipped in the only holder's copy
            f.seek(12345)
            byte = f.read(1)
            f.seek(12345)
            f.write(bytes([byte[0] ^ 1]))
        started = time.monotonic()
        results = list(ex.map(fn, [0.5] * 24, timeout=120))  # backlog enough that other workers' loads pay
        seconds = time.monotonic() - started
    assert all(ctx == expected for _, ctx in results)
    assert len({pid for pid, _ in results} - {first_pid}) >= 1, "other workers should have loaded it"
    assert not blob.exists() or hashlib.sha256(blob.read_bytes()).hexdigest() == expected["part-0.bin"]
    source, peer = totals(fn, ep)
    print(f"\nbyte flipped in the only holder: detected, 24 invocations done in {seconds:.1f}s; "
          f"source bytes {source / MB:.0f} MB (context {size / MB:.0f} MB), peer bytes {peer / MB:.0f} MB")
    assert source >= 2 * size  # its copy unusable, the files came again (from the source: nobody else had them)


def test_a_source_that_is_gone_fails_every_waiting_invocation_naming_it(place):
    _, data = place
    gone = data / "model-gone"
    four_idle_workers()
    fn = ctx_function(model=checksums, files=str(gone))(who)
    started = time.monotonic()
    with Executor(endpoint=NAME) as ex:
        futures = [ex.submit(fn, 0.0) for _ in range(8)]
        for fut in futures:
            with pytest.raises(ContextInitError, match=re.escape(str(gone))):
                fut.result(timeout=60)
    print(f"\nsource gone: 8 invocations failed with ContextInitError in {time.monotonic() - started:.1f}s")
    st = live()  # the daemon is up and has nothing left
    assert st["backlog"] == 0 and st["batches_in_flight"] == 0


def test_a_holder_killed_mid_copy_the_copy_goes_on_from_another(place):
    """Three of four nodes hold the files (max_serving 2: the fourth copies in
    a second wave); its holder is SIGKILLed mid-copy: it goes on from another
    holder where it stopped, reading nothing twice and nothing from the source."""
    ep, fn, expected, size = fresh_context(place, "model-b", 3, 50 * MB)
    key = fn.context_key

    def mid_copy(st):
        files = st["worker_files"]
        holders = [w for w, f in files.items() if key in f["staged"]]
        serving = [w for w in holders if files[w]["serving"]]
        copying = [w for w, f in files.items()
                   if key in f["staging"] and size * 0.1 < f["peer_bytes"].get(key, 0) < size * 0.6]
        if len(holders) >= 3 and len(serving) == 1 and copying:
            return copying[0], serving[0], files[copying[0]]["peer_bytes"][key]
        return None

    with Executor(endpoint=NAME) as ex:
        futures = [ex.submit(fn, 0.0) for _ in range(16)]
        fetcher, holder, done = wait_for(mid_copy, 90, "second-wave copy")
        os.kill(int(holder.rsplit(":", 1)[1]), signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda st: key in st["worker_files"].get(fetcher, {}).get("staged", []), 60, "finished copy")
        recovered = time.monotonic() - killed
        results = [f.result(timeout=120) for f in futures]
    assert all(ctx == expected for _, ctx in results)
    copied = live()["worker_files"][fetcher]
    print(f"\nholder killed {done / MB:.0f} MB into a {size / MB:.0f} MB copy: it finished {recovered:.2f}s later "
          f"(the rest at {BANDWIDTH / MB:.0f} MB/s: {(size - done) / BANDWIDTH:.2f}s), from another holder; its "
          f"bytes from peers {copied['peer_bytes'][key] / MB:.0f} MB, from the source "
          f"{copied['source_bytes'].get(key, 0)}")
    assert copied["peer_bytes"][key] == size and copied["source_bytes"].get(key, 0) == 0  # nothing twice
    source, _ = totals(fn, ep)
    assert source == size  # the killed reader's bytes are on record; nobody read the source again
