"""A throw-away OpenSSH server on a free loopback port.

    with sshd_server(tmp_path) as server:
        subprocess.run(["ssh", *server.ssh_args(), server.destination, "echo hi"])

It logs in as the current user (root here) with a throw-away key pair and
trusts only the throw-away host key; keys and known_hosts in ~/.ssh are neither
used nor changed.

Remote commands run through the user's shell (bash reads ~/.bashrc) with a
plain environment: no virtualenv is active and the caller's variables are not
forwarded, so pass full paths (e.g. ``sys.executable``) or set variables inside
the command (``env FOO=1 /path/to/python ...``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ._util import free_port, require, stop, wait_until

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it needs an absolute path
SSH = "/usr/bin/ssh"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


@dataclasses.dataclass(frozen=True)
class SSHServer:
    host: str
    port: int
    user: str
    identity_file: Path
    known_hosts: Path

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}"

    def ssh_args(self) -> list[str]:
        """Options that make ``ssh`` reach this server non-interactively."""
        return [
            "-p", str(self.port),
            "-i", str(self.identity_file),
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
        ]


def _keygen(path: Path) -> None:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "faas-test", "-f", path], check=True)


@contextlib.contextmanager
def sshd_server(tmpdir: str | Path) -> Iterator[SSHServer]:
    """Start sshd on 127.0.0.1, yield how to reach it; stop it on exit."""
    require(SSHD, SSH, SSH_KEYGEN)
    tmpdir = Path(tmpdir)
    host_key, user_key = tmpdir / "ssh_host_ed25519_key", tmpdir / "id_ed25519"
    _keygen(host_key)
    _keygen(user_key)
    authorized_keys = tmpdir / "authorized_keys"
    authorized_keys.write_text(Path(f"{user_key}.pub").read_text())
    port = free_port()
    known_hosts = tmpdir / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {Path(f'{host_key}.pub').read_text()}")

    config = tmpdir / "sshd_config"
    config.write_text(
        f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {tmpdir / "sshd.pid"}
AuthorizedKeysFile {authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
PrintMotd no
Subsystem sftp {SFTP_SERVER}
"""
    )
    # sshd refuses to start without its privilege separation directory, which
    # normally comes from the (absent) systemd unit.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = tmpdir / "sshd.log"
    with log.open("ab") as out:
        daemon = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdout=out, stderr=subprocess.STDOUT)
    try:
        server = SSHServer("127.0.0.1", port, pwd.getpwuid(os.getuid()).pw_name, user_key, known_hosts)
        ssh_true = [SSH, *server.ssh_args(), "-o", "ConnectTimeout=2", server.destination, "true"]
        wait_until(
            lambda: subprocess.run(ssh_true, capture_output=True, timeout=10).returncode == 0,
            "sshd to accept logins",
            procs=((daemon, log),),
        )
        yield server
    finally:
        stop(daemon)
