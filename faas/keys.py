"""CurveZMQ key pairs for ``tcp://`` endpoints, in pyzmq's certificate format.

An endpoint keeps its pair in its folder (``endpoint.key``, ``endpoint.key_secret``);
a client keeps one under ``$FAAS_HOME/keys/`` (``client.key``, ``client.key_secret``).
Both files are owner-only. Public keys travel between machines as Z85 text (40
characters); secret keys never leave their file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from filelock import FileLock
from zmq.utils import z85

from faas.home import faas_home, make_private

Z85_KEY_LEN = 40


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # Z85
    secret: bytes  # Z85

    @property
    def public_text(self) -> str:
        return self.public.decode()


def ensure_pair(folder: Path, name: str) -> KeyPair:
    """Load ``folder/NAME.key_secret``, creating the pair first if there is none.

    Concurrent first uses (several client processes) create one pair between them."""
    folder.mkdir(parents=True, mode=0o700, exist_ok=True)
    with FileLock(folder / f".{name}.lock", mode=0o600):
        if not (folder / f"{name}.key_secret").exists():
            _create(folder, name)
    return load_pair(folder / f"{name}.key_secret")


def _create(folder: Path, name: str) -> None:
    """Write the pair in a private (0700) scratch folder, make it 0600, then
    move it in place: a secret is never readable by others, not even briefly."""
    scratch = Path(tempfile.mkdtemp(dir=folder, prefix=".new-"))
    try:
        public, secret = zmq.auth.create_certificates(scratch, name)
        for path in (public, secret):
            os.chmod(path, 0o600)
        os.replace(public, folder / f"{name}.key")
        os.replace(secret, folder / f"{name}.key_secret")  # last: its presence marks a whole pair
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_pair(secret_file: str | os.PathLike) -> KeyPair:
    try:
        public, secret = zmq.auth.load_certificate(Path(secret_file).expanduser())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read a CURVE key pair from {secret_file}: {e}") from None
    if secret is None:
        raise ValueError(f"{secret_file} holds no secret key (give the .key_secret file)")
    return KeyPair(check_public_key(public.decode()), secret)


def client_pair(secret_file: str | os.PathLike | None = None) -> KeyPair:
    """The given client key pair, or this user's default one (created on first use)."""
    if secret_file is not None:
        return load_pair(secret_file)
    make_private(faas_home())
    return ensure_pair(faas_home() / "keys", "client")


def check_public_key(key: str) -> bytes:
    """A Z85 public key as bytes; ValueError if it is not one."""
    try:
        ok = len(key) == Z85_KEY_LEN and len(z85.decode(key.encode("ascii"))) == 32
    except (UnicodeEncodeError, ValueError, KeyError, IndexError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"{key!r} is not a CURVE public key (40 characters of Z85 text)")
    return key.encode("ascii")


def public_key(value: str | os.PathLike) -> bytes:
    """A public key given as Z85 text or as a certificate file (``.key``)."""
    if isinstance(value, str) and len(value) == Z85_KEY_LEN:
        return check_public_key(value)
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"{value!r} is neither a CURVE public key nor a key file")
    try:
        return check_public_key(zmq.auth.load_certificate(path)[0].decode())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read a CURVE public key from {path}: {e}") from None
