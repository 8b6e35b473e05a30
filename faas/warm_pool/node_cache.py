"""A node's cache of context files on its local disk: content addressed, each
file checked against its hash.

A context names its files (a folder, or a list of paths, in practice on the
cluster's shared filesystem); each node keeps one copy, which every worker of
the node shares and which other nodes copy from (:mod:`faas.warm_pool.fetcher`,
:mod:`faas.warm_pool.fileserver`). Layout under the root (owner only)::

    blobs/ab/<hash>           a file's bytes, named by their blake2b hash (read-only); contexts share them
    blobs/ab/<hash>.ok        the blob's size, mtime and inode when its hash was last checked
    contexts/<key>.json       a context's manifest (each file's path, size and hash), written once all its
                              blobs are in: its presence means the context is staged
    contexts/<key>.lock       held by the worker staging the context; the node's others wait, then find it
    contexts/<key>.progress   while staging: bytes so far; its mtime says the stager is alive
    contexts/<key>.failed     why the last stage here failed (peers are told, rather than waited for)
    views/<key>/<i>/<name>    the context's files under their own names (links to blobs): what its loader reads
    partial/                  copies in progress (a crashed copy's are removed by a later stager)
    converted/                GGUF models converted to checkpoints (faas.warm_pool.gguf)

A blob is used (loaded or served) only while its size, mtime and inode match
those recorded when its hash was checked; otherwise it is hashed again, and
removed if it no longer matches, so a flipped byte is never loaded.

Imports nothing from faas.client or faas.endpoint: it runs inside workers.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from filelock import FileLock

READ_CHUNK = 4 * 2**20
ENV = "FAAS_NODE_CACHE"


def default_root() -> Path:
    """``$FAAS_NODE_CACHE``, else ``faas-node-cache-USER`` in the node's temp folder (node-local disk)."""
    configured = os.environ.get(ENV)
    if configured:
        return Path(os.path.expandvars(configured)).expanduser()
    return Path(tempfile.gettempdir()) / f"faas-node-cache-{getpass.getuser()}"


def new_hash():
    return hashlib.blake2b(digest_size=32)


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, "<i>/<name>[/...]": under source i
    size: int
    hash: str


@dataclass
class Manifest:
    """A context's files, made by the worker that read them from their source,
    while it copied them; other nodes get it from their peers with the files."""

    key: str
    sources: list[str]  # as the context names them
    files: list[FileEntry] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)

    def source_path(self, entry: FileEntry) -> Path:
        """Where ``entry`` is read from at its source."""
        index, _, rest = entry.path.partition("/")
        return Path(os.path.normpath(os.path.expanduser(self.sources[int(index)]))).parent / rest

    def dumps(self) -> str:
        return json.dumps({"key": self.key, "sources": self.sources, "files": [asdict(f) for f in self.files]})

    @classmethod
    def loads(cls, text: str | bytes) -> Manifest:
        data = json.loads(text)
        files = [FileEntry(str(f["path"]), int(f["size"]), str(f["hash"])) for f in data["files"]]
        for f in files:
            if f.size < 0 or ".." in f.path.split("/") or f.path.startswith("/") or not _is_hash(f.hash):
                raise ValueError(f"bad manifest entry {f}")
        return cls(str(data["key"]), [str(s) for s in data["sources"]], files)


def source_listing(sources: list[str]) -> Iterator[tuple[str, Path]]:
    """(relative path, source file) of every file under ``sources``, in a fixed
    order; a folder is walked (following links), a missing path raises."""
    for i, source in enumerate(sources):
        path = Path(os.path.normpath(os.path.expanduser(source)))
        if path.is_dir():
            for folder, dirs, names in os.walk(path, followlinks=True):
                dirs.sort()
                for name in sorted(names):
                    file = Path(folder) / name
                    yield f"{i}/{path.name}/{file.relative_to(path).as_posix()}", file
        elif path.is_file():
            yield f"{i}/{path.name}", path
        else:
            raise FileNotFoundError(f"context file {source} does not exist (or is not a file or folder)")


def _is_hash(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


class NodeCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def ensure(self) -> None:
        for sub in ("blobs", "contexts", "views", "partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o700)

    # -- blobs ----------------------------------------------------------------
    def blob(self, digest: str) -> Path:
        if not _is_hash(digest):
            raise ValueError(f"not a blob name: {digest!r}")
        return self.root / "blobs" / digest[:2] / digest

    def _record(self, digest: str) -> Path:
        return self.blob(digest).with_suffix(".ok")

    def looks_intact(self, digest: str, size: int | None = None) -> bool:
        """Whether the blob is unchanged since its hash was checked (a stat, no read)."""
        try:
            st = self.blob(digest).stat()
            recorded = json.loads(self._record(digest).read_text())
        except (OSError, ValueError):
            return False
        return recorded == _identity(st) and (size is None or st.st_size == size)

    def has(self, digest: str, size: int) -> bool:
        """The blob is here and holds the bytes its name says: checked by stat
        when unchanged since its last check, else hashed again (and removed if
        it no longer matches)."""
        if self.looks_intact(digest, size):
            return True
        return self.verify(digest, size)

    def verify(self, digest: str, size: int | None = None) -> bool:
        """Hash the blob again; a blob that does not match is removed."""
        path = self.blob(digest)
        try:
            st = path.stat()
            h = new_hash()
            with open(path, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    h.update(chunk)
        except OSError:
            return False
        if h.hexdigest() == digest and (size is None or st.st_size == size):
            _write_atomic(self._record(digest), json.dumps(_identity(st)))
            return True
        self.remove(digest)
        return False

    def remove(self, digest: str) -> None:
        for path in (self._record(digest), self.blob(digest)):
            path.unlink(missing_ok=True)

    def partial(self, tag: str) -> Path:
        """A fresh file to copy into; :meth:`add` moves it into place once its hash is checked."""
        fd, name = tempfile.mkstemp(prefix=f"{tag}.{os.getpid()}.", dir=self.root / "partial")
        os.close(fd)
        return Path(name)

    def add(self, partial: Path, digest: str) -> None:
        """A copy whose bytes hash to ``digest`` becomes the blob (replacing any)."""
        path = self.blob(digest)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        partial.chmod(0o400)
        os.replace(partial, path)
        _write_atomic(self._record(digest), json.dumps(_identity(path.stat())))

    def clean_partials(self, older_than: float) -> None:
        """Copies nobody has written to for ``older_than`` seconds: left by crashed workers."""
        now = time.time()
        for path in (self.root / "partial").iterdir():
            try:
                if now - path.stat().st_mtime > older_than:
                    path.unlink()
            except OSError:
                pass

    # -- contexts -------------------------------------------------------------
    def manifest(self, key: str) -> Manifest | None:
        try:
            return Manifest.loads((self.root / "contexts" / f"{key}.json").read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write_manifest(self, manifest: Manifest) -> None:
        _write_atomic(self.root / "contexts" / f"{manifest.key}.json", manifest.dumps())

    def staged(self, key: str, check: bool = True) -> Manifest | None:
        """The context's manifest if every one of its files is here: ``check``:
        hashing again the blobs changed since their last check; else by stat alone."""
        manifest = self.manifest(key)
        if manifest is None:
            return None
        test = self.has if check else self.looks_intact
        return manifest if all(test(f.hash, f.size) for f in manifest.files) else None

    def staged_keys(self) -> list[str]:
        """Contexts staged here, by stat alone (what a starting worker reports)."""
        folder = self.root / "contexts"
        keys = [p.stem for p in folder.glob("*.json")] if folder.is_dir() else []
        return sorted(k for k in keys if self.staged(k, check=False) is not None)

    def lock(self, key: str) -> FileLock:
        return FileLock(self.root / "contexts" / f"{key}.lock")

    def view(self, manifest: Manifest) -> Path:
        """The folder where the context's files appear under their own names
        (links into the blobs): ``<view>/<i>/<name>`` is source i."""
        top = self.root / "views" / manifest.key
        for i, source in enumerate(manifest.sources):
            name = Path(os.path.normpath(os.path.expanduser(source))).name
            if not any(f.path == f"{i}/{name}" for f in manifest.files):  # a folder (it may be empty)
                (top / str(i) / name).mkdir(parents=True, exist_ok=True)
        for f in manifest.files:
            link = top / f.path
            target = os.path.relpath(self.blob(f.hash), link.parent)
            if link.is_symlink() and os.readlink(link) == target:
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
            tmp.unlink(missing_ok=True)
            os.symlink(target, tmp)
            os.replace(tmp, link)
        return top

    # -- a stage in progress (so that a peer can tell fetchers to wait) -------
    def _progress_file(self, key: str) -> Path:
        return self.root / "contexts" / f"{key}.progress"

    def mark_progress(self, key: str, done: int, total: int) -> None:
        _write_atomic(self._progress_file(key), json.dumps({"done": done, "total": total, "pid": os.getpid()}))

    def clear_progress(self, key: str) -> None:
        self._progress_file(key).unlink(missing_ok=True)

    def mark_failed(self, key: str, error: str) -> None:
        _write_atomic(self.root / "contexts" / f"{key}.failed", json.dumps({"error": error}))

    def clear_failed(self, key: str) -> None:
        (self.root / "contexts" / f"{key}.failed").unlink(missing_ok=True)

    def failure(self, key: str) -> tuple[str, float] | None:
        """(why the last stage of the context failed here, seconds ago), or None."""
        path = self.root / "contexts" / f"{key}.failed"
        try:
            return str(json.loads(path.read_text())["error"]), time.time() - path.stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def progress(self, key: str) -> tuple[int, float] | None:
        """(bytes staged so far, seconds since the stager last said so), or None: nobody stages it."""
        path = self._progress_file(key)
        try:
            age = time.time() - path.stat().st_mtime
            return int(json.loads(path.read_text())["done"]), age
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _identity(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
