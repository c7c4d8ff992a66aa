"""Two independent single-node Cassandra 5.0 clusters on loopback: the source platform and the tenant VPC.

There is no Debian or PyPI package of Cassandra, so the jars come from Maven Central and the daemon is
started straight from them with ``java``; the conf (yaml, logback) is generated here so that a node
directory is always reproducible from the topology alone. Each node keeps everything under
``<state_dir>/cassandra/<node>/``: ``conf/``, ``storage/`` (data, commitlog, hints...), the pidfile and
``last_start.json``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from tenant_migration.stack.cassandra_node import (  # noqa: F401  (re-exported: the old home of these names)
    _EXPORTS,
    _OPENS,
    CASSANDRA_VERSION,
    HEAP,
    JAMM_JAR,
    JVM17_MODULE_FLAGS,
    MAIN_CLASS,
    NodePaths,
    cassandra_yaml,
    jvm_command,
    lib_dir,
    logback_xml,
    node_paths,
    render_yaml,
    write_config,
)
from tenant_migration.stack.common import (
    ServiceStatus,
    StackError,
    as_service_user,
    ensure_service_user,
    make_traversable,
    pid_alive,
    port_open,
    read_pid,
    require_binary,
    require_port_free,
    tail,
    wait_for,
)
from tenant_migration.stack.topology import CassandraNode, Topology

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
INSTALL_HINT = "Install them with `apt-get install -y maven openjdk-17-jdk-headless`."


# ----------------------------------------------------------------------------------------- binaries


def parse_java_major(version_output: str) -> int | None:
    """Major version from ``java -version`` output: ``"1.8.0_392"`` is 8, ``"17.0.15"`` is 17."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):
        return int(match.group(2))
    return major


@lru_cache(maxsize=1)
def require_java() -> str:
    """Return the ``java`` to use; Cassandra 5.0 needs 17 (it does not run on 8, and we ship only
    the Java 17 module flags)."""
    java = require_binary("java", INSTALL_HINT)
    proc = subprocess.run([java, "-version"], capture_output=True, text=True)
    major = parse_java_major(proc.stderr + proc.stdout)
    if major is None or major < 17:
        found = (proc.stderr + proc.stdout).strip().splitlines()[:1]
        raise StackError(
            f"Cassandra {CASSANDRA_VERSION} needs Java 17 or newer; `{java} -version` says "
            f"{found[0] if found else 'nothing'}. {INSTALL_HINT} and make it the default "
            "(`update-alternatives --config java`)."
        )
    return java


def _pom(version: str) -> str:
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>local.tenantmig</groupId><artifactId>cassandra-jars</artifactId><version>1</version>\n"
        "  <dependencies>\n"
        "    <dependency><groupId>org.apache.cassandra</groupId><artifactId>cassandra-all</artifactId>"
        f"<version>{version}</version></dependency>\n"
        "  </dependencies>\n"
        "</project>\n"
    )


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise stack commands across processes (two `make stack-up` at once must not race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_jars(topo: Topology) -> Path:
    """Return the folder of Cassandra's jars, resolving them from Maven Central on first use.

    Maven writes into ``lib.partial``; only once it succeeded is that renamed to ``lib`` and the
    marker written, so an interrupted download is redone rather than trusted.
    """
    require_java()
    lib = lib_dir(topo)
    home = lib.parent
    marker = home / "COMPLETE"
    with _file_lock(topo.cache_dir / f"cassandra-{CASSANDRA_VERSION}.lock"):
        if marker.exists() and (lib / JAMM_JAR).exists():
            return lib
        mvn = require_binary("mvn", f"Maven is needed once to fetch the Cassandra jars. {INSTALL_HINT}")
        marker.unlink(missing_ok=True)
        partial = home / "lib.partial"
        for stale in (lib, partial):
            if stale.exists():
                shutil.rmtree(stale)
        home.mkdir(parents=True, exist_ok=True)
        pom = home / "pom.xml"
        pom.write_text(_pom(CASSANDRA_VERSION))
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            f"-Dmaven.repo.local={topo.cache_dir / 'm2'}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=home)
        if proc.returncode != 0 or not (partial / JAMM_JAR).exists():
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise StackError(
                f"could not fetch cassandra-all {CASSANDRA_VERSION} from Maven Central "
                f"(exit {proc.returncode}; Maven Central must be reachable). Command: {' '.join(cmd)}\n{output}"
            )
        partial.rename(lib)
        jars = sorted(p.name for p in lib.glob("*.jar"))
        marker.write_text(json.dumps({"version": CASSANDRA_VERSION, "jars": len(jars)}) + "\n")
    make_traversable(lib)
    return lib


# ---------------------------------------------------------------------------------------- processes


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own exited child, so it does not linger as a zombie."""
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _gone(pid: int) -> bool:
    """True once every thread of ``pid`` has exited, so its sockets are closed.

    Neither an empty /proc cmdline nor a zombie leader is enough: a JVM's main thread turns zombie
    while its other threads are still exiting and holding the ports.
    """
    _reap(pid)
    if not pid_alive(pid):
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except (OSError, IndexError):
        return True
    return state in ("Z", "X") and threads <= 1


def _process_age(pid: int) -> float:
    """Seconds since ``pid`` started, so a start begun by an earlier command is timed right."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))


def node_pid(paths: NodePaths) -> int | None:
    """The node's pid if the pidfile names a live process that is this node's Cassandra.

    Checking the command line guards against a recycled pid; a zombie has an empty one.
    """
    pid = read_pid(paths.pidfile)
    if pid is None:
        return None
    _reap(pid)
    cmd = _cmdline(pid)
    return pid if MAIN_CLASS in cmd and str(paths.yaml_file) in cmd else None


def cql_cluster_name(node: CassandraNode, timeout: float = 5.0) -> str:
    """Ask the node over CQL which cluster it belongs to; raises if CQL does not answer."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    # Both clusters listen on the same port of neighbouring addresses: pin the driver to this host.
    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([node.host]), request_timeout=timeout)
    cluster = Cluster(
        contact_points=[node.host],
        port=node.native_port,
        protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=timeout,
        control_connection_timeout=timeout,
    )
    try:
        session = cluster.connect()
        row = session.execute("SELECT cluster_name FROM system.local").one()
        return str(row.cluster_name)
    finally:
        cluster.shutdown()


def _cql_ready(node: CassandraNode) -> bool:
    if not port_open(node.host, node.native_port):
        return False
    try:
        name = cql_cluster_name(node)
    except Exception:  # any driver error means "not ready yet"
        return False
    if name != node.cluster_name:
        raise _NodeFailed(
            f"{node.host}:{node.native_port} answers CQL for cluster {name!r}, not {node.cluster_name!r}: "
            "another Cassandra holds this address. Stop it first."
        )
    return True


def _failure_message(node: CassandraNode, paths: NodePaths, why: str) -> str:
    return (
        f"Cassandra node {node.name} ({node.host}:{node.native_port}) {why}.\n"
        f"--- {paths.console_file} (last lines)\n{tail(paths.console_file, 25)}\n"
        f"--- {paths.log_file} (last lines)\n{tail(paths.log_file, 25)}"
    )


class _NodeFailed(StackError):
    """The node cannot become ready however long we wait: stop polling at once."""


class _Process(Protocol):
    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...


class _Adopted:
    """Stand-in for ``Popen`` for a node an earlier command started and that is still coming up."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and _gone(self.pid):
            self.returncode = -1
        return self.returncode


@dataclass
class _Starting:
    node: CassandraNode
    paths: NodePaths
    proc: _Process
    started: float


def _check_ports_free(node: CassandraNode) -> None:
    require_port_free(node.host, node.native_port, f"Cassandra {node.name}")
    require_port_free(node.host, node.storage_port, f"Cassandra {node.name} (storage port)")
    require_port_free("127.0.0.1", node.jmx_port, f"Cassandra {node.name} (JMX)")


def _launch(java: str, lib: Path, node: CassandraNode, paths: NodePaths) -> _Starting:
    write_config(node, paths)
    paths.last_start_file.unlink(missing_ok=True)
    with paths.console_file.open("ab") as console:
        console.write(f"\n--- starting {node.name} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        console.flush()
        started = time.monotonic()
        proc = subprocess.Popen(
            as_service_user(jvm_command(java, lib, node, paths)),
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            cwd=paths.root,
            start_new_session=True,
        )
    paths.pidfile.write_text(f"{proc.pid}\n")
    return _Starting(node, paths, proc, started)


def _await(starting: _Starting, timeout: float) -> float:
    """Wait until the node answers CQL; return and record its start time."""
    node, paths, proc = starting.node, starting.paths, starting.proc

    def ready() -> bool:
        if proc.poll() is not None:
            paths.pidfile.unlink(missing_ok=True)
            raise _NodeFailed(_failure_message(node, paths, f"exited with status {proc.returncode} while starting"))
        return _cql_ready(node)

    try:
        wait_for(ready, timeout, f"Cassandra node {node.name}")
    except _NodeFailed:
        raise
    except StackError as exc:
        why = f"did not answer CQL within {timeout:.0f}s (it is left running: `down` stops it)"
        raise StackError(_failure_message(node, paths, why)) from exc
    seconds = round(time.monotonic() - starting.started, 1)
    paths.last_start_file.write_text(
        json.dumps({"node": node.name, "seconds": seconds, "pid": proc.pid, "at": time.time()}) + "\n"
    )
    return seconds


def up(topo: Topology, *, concurrent: bool = True, timeout: float = START_TIMEOUT_S) -> dict[str, float | None]:
    """Start every Cassandra node that is not running and wait until each answers CQL.

    Returns each node's start time in seconds, from JVM launch to first CQL answer (None for a node
    that was already answering); the same figure is kept in ``last_start.json``. ``concurrent``
    launches every JVM before waiting on any.
    """
    ensure_service_user()
    java = require_java()
    lib = ensure_jars(topo)
    durations: dict[str, float | None] = {}
    with _file_lock(topo.state_dir / "cassandra" / ".lock"):
        adopted: list[_Starting] = []
        pending: list[tuple[CassandraNode, NodePaths]] = []
        for node in topo.cassandra_nodes:
            paths = node_paths(topo, node)
            pid = node_pid(paths)
            if pid is not None:
                durations[node.name] = None
                if not port_open(node.host, node.native_port):
                    begun = time.monotonic() - _process_age(pid)
                    adopted.append(_Starting(node, paths, _Adopted(pid), begun))
                continue
            paths.pidfile.unlink(missing_ok=True)
            _check_ports_free(node)
            pending.append((node, paths))
        for starting in adopted:
            durations[starting.node.name] = _await(starting, timeout)
        if concurrent:
            launched = [_launch(java, lib, node, paths) for node, paths in pending]
            for starting in launched:
                durations[starting.node.name] = _await(starting, timeout)
        else:
            for node, paths in pending:
                durations[node.name] = _await(_launch(java, lib, node, paths), timeout)
    return {node.name: durations.get(node.name) for node in topo.cassandra_nodes}


def _signal(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def down(topo: Topology, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop every node: SIGTERM (Cassandra drains and flushes), SIGKILL after ``timeout``. Data stays.

    All nodes are signalled first and waited on together: a drain takes seconds each.
    """
    with _file_lock(topo.state_dir / "cassandra" / ".lock"):
        stopping: list[tuple[NodePaths, int]] = []
        for node in topo.cassandra_nodes:
            paths = node_paths(topo, node)
            pid = node_pid(paths)
            if pid is None:
                paths.pidfile.unlink(missing_ok=True)
                continue
            _signal(pid, signal.SIGTERM)
            stopping.append((paths, pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(_gone(pid) for _, pid in stopping):
            time.sleep(0.2)
        for paths, pid in stopping:
            if not _gone(pid):
                _signal(pid, signal.SIGKILL)
                while not _gone(pid):
                    time.sleep(0.1)
            paths.pidfile.unlink(missing_ok=True)


def last_start_seconds(topo: Topology, node: CassandraNode) -> float | None:
    """How long the running process of ``node`` took to answer CQL, if this stack timed it."""
    paths = node_paths(topo, node)
    try:
        record = json.loads(paths.last_start_file.read_text())
        pid, seconds = int(record["pid"]), float(record["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return seconds if pid == node_pid(paths) else None


def status(topo: Topology) -> list[ServiceStatus]:
    """One line per node: up only when our process holds it and the native port answers."""
    result: list[ServiceStatus] = []
    for node in topo.cassandra_nodes:
        paths = node_paths(topo, node)
        pid = node_pid(paths)
        listening = port_open(node.host, node.native_port)
        if pid is not None and listening:
            started = last_start_seconds(topo, node)
            detail = f"pid {pid}, cluster {node.cluster_name}, jmx {node.jmx_port}"
            if started is not None:
                detail += f", started in {started:.1f}s"
        elif pid is not None:
            detail = f"pid {pid} alive but native port closed (starting, or stuck: see {paths.log_file})"
        elif listening:
            detail = "port answered by a process that is not this stack's node"
        else:
            detail = "not running"
        result.append(
            ServiceStatus(
                name=node.name,
                address=f"{node.host}:{node.native_port}",
                running=pid is not None and listening,
                detail=detail,
            )
        )
    return result
