"""Shared plumbing of the local stack: the unprivileged service user, readiness waits, port checks.

PostgreSQL and Cassandra refuse to run as root, and CI runs as root: when we are root, every server
runs as ``SERVICE_USER`` (created on first use) through ``runuser``. When we are not root, servers run
as ourselves.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

SERVICE_USER = "tenantmig"


class StackError(RuntimeError):
    """A stack command cannot go on; the message says what to do."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    running: bool
    detail: str = ""

    def line(self) -> str:
        state = "up  " if self.running else "DOWN"
        return f"{state}  {self.name:<18} {self.address:<22} {self.detail}"


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_service_user() -> str:
    """Return the user servers run as, creating it when we are root and it is missing."""
    if not is_root():
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
        )
    return SERVICE_USER


def make_traversable(path: Path) -> None:
    """Let the service user reach ``path``: every ancestor needs the x bit for others.

    Only the traverse bit is added (never read), and only when we are root and it is missing.
    """
    if not is_root():
        return
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)


def own_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and give it to the service user."""
    path.mkdir(parents=True, exist_ok=True)
    if is_root():
        user = pwd.getpwnam(ensure_service_user())
        os.chown(path, user.pw_uid, user.pw_gid)
        make_traversable(path)
    return path


def as_service_user(cmd: Sequence[str]) -> list[str]:
    """Prefix ``cmd`` so it runs as the service user.

    ``setpriv`` execs the command in place (``runuser`` would fork and wait), so the pid that
    ``Popen`` returns is the server's own and can be signalled directly.
    """
    if is_root():
        user = pwd.getpwnam(ensure_service_user())
        return [
            "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--", *cmd,
        ]
    return list(cmd)


def run_service(cmd: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a short command as the service user, raising StackError with its output on failure."""
    proc = subprocess.run(as_service_user(cmd), capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise StackError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}".strip()
        )
    return proc  # type: ignore[no-any-return]


def require_binary(path_or_name: str, hint: str) -> str:
    found = shutil.which(path_or_name) if os.sep not in path_or_name else path_or_name
    if not found or not os.access(found, os.X_OK):
        raise StackError(f"{path_or_name} not found. {hint}")
    return found


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_port_free(host: str, port: int, owner: str) -> None:
    """Refuse to start ``owner`` on a port something else already listens on."""
    if port_open(host, port):
        raise StackError(
            f"{host}:{port} is already in use by another process, so {owner} cannot start there. "
            f"Find it with `ss -ltnp 'sport = :{port}'` and stop it, or run `make stack-down` if it is "
            "a leftover of this stack whose state folder was removed."
        )


def wait_for(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None) -> None:
    """Poll ``check`` until true or raise StackError naming ``what`` and the log to read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    where = f" See {log} (last lines below).\n{tail(log, 25)}" if log else ""
    raise StackError(f"{what} did not become ready within {timeout:.0f}s.{where}")


def tail(path: Path | None, lines: int) -> str:
    if path is None or not path.exists():
        return ""
    with path.open("rb") as fh:
        data = fh.read()[-20000:]
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def stop_pidfile_process(pidfile: Path, grace_s: float = 10.0) -> None:
    """Stop the process ``pidfile`` names, if it runs: SIGTERM, then SIGKILL after ``grace_s``;
    the pidfile is removed either way."""
    pid = read_pid(pidfile)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and read_pid(pidfile) is not None:
            time.sleep(0.1)
        if read_pid(pidfile) is not None:
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
