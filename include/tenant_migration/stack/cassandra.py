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
from typing import Any, Protocol

import yaml

from tenant_migration.stack.common import (
    ServiceStatus,
    StackError,
    as_service_user,
    ensure_service_user,
    make_traversable,
    own_dir,
    pid_alive,
    port_open,
    read_pid,
    require_binary,
    require_port_free,
    tail,
    wait_for,
)
from tenant_migration.stack.topology import CassandraNode, Topology

CASSANDRA_VERSION = "5.0.6"
JAMM_JAR = "jamm-0.4.0.jar"
MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
HEAP = "1G"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
INSTALL_HINT = "Install them with `apt-get install -y maven openjdk-17-jdk-headless`."

# Cassandra's own conf/jvm17-server.options (5.0, JPMS and Netty parts) plus the two extra module
# grants 5.0.6 needs here: without them the JVM dies at start on Java 17.
_EXPORTS = (
    "java.base/jdk.internal.misc",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.rmi/sun.rmi.registry",
    "java.rmi/sun.rmi.server",
    "java.sql/java.sql",
    "java.base/java.lang.ref",
    "jdk.unsupported/sun.misc",
    "jdk.compiler/com.sun.tools.javac.file",
    "jdk.attach/sun.tools.attach",
    "java.management/com.sun.jmx.remote.security",
)
_OPENS = (
    "java.base/java.lang.module",
    "java.base/jdk.internal.loader",
    "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect",
    "java.base/jdk.internal.math",
    "java.base/jdk.internal.module",
    "java.base/jdk.internal.util.jar",
    "jdk.management/com.sun.management.internal",
    "java.base/sun.nio.ch",
    "java.base/java.io",
    "java.base/java.lang.reflect",
    "jdk.compiler/com.sun.tools.javac",
    "java.base/java.lang",
    "java.base/java.util",
    "java.base/java.nio",
)
JVM17_MODULE_FLAGS: tuple[str, ...] = (
    *(arg for pkg in _EXPORTS for arg in ("--add-exports", f"{pkg}=ALL-UNNAMED")),
    *(arg for pkg in _OPENS for arg in ("--add-opens", f"{pkg}=ALL-UNNAMED")),
    "-Djdk.attach.allowAttachSelf=true",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
)


# --------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class NodePaths:
    """Where one node keeps its files; derived from the topology only, so every command agrees."""

    root: Path
    logs_dir: Path
    name: str

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def yaml_file(self) -> Path:
        return self.conf_dir / "cassandra.yaml"

    @property
    def logback_file(self) -> Path:
        return self.conf_dir / "logback.xml"

    @property
    def storage_dir(self) -> Path:
        return self.root / "storage"

    @property
    def pidfile(self) -> Path:
        return self.root / "cassandra.pid"

    @property
    def last_start_file(self) -> Path:
        return self.root / "last_start.json"

    @property
    def log_file(self) -> Path:
        """Cassandra's own log (logback, INFO and up)."""
        return self.logs_dir / f"{self.name}.log"

    @property
    def console_file(self) -> Path:
        """The JVM's stdout/stderr: WARN and up, plus anything said before logback is up."""
        return self.logs_dir / f"{self.name}.out"


def node_paths(topo: Topology, node: CassandraNode) -> NodePaths:
    return NodePaths(root=topo.state_dir / "cassandra" / node.name, logs_dir=topo.logs_dir, name=node.name)


def lib_dir(topo: Topology) -> Path:
    return topo.cache_dir / f"cassandra-{CASSANDRA_VERSION}" / "lib"


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


# ------------------------------------------------------------------------------------------- config


def cassandra_yaml(node: CassandraNode) -> dict[str, Any]:
    """The cassandra.yaml of one node: a single-token, single-node cluster sized for a small machine.

    Directories are left out on purpose: ``-Dcassandra.storagedir`` places them all.
    """
    return {
        "cluster_name": node.cluster_name,
        "num_tokens": 1,
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch": "SimpleSnitch",
        "seed_provider": [
            {
                "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                "parameters": [{"seeds": f"{node.host}:{node.storage_port}"}],
            }
        ],
        "listen_address": node.host,
        "rpc_address": node.host,
        "native_transport_port": node.native_port,
        "storage_port": node.storage_port,
        "start_native_transport": True,
        "commitlog_sync": "periodic",
        "commitlog_sync_period": "10000ms",
        "authenticator": "AllowAllAuthenticator",
        "authorizer": "AllowAllAuthorizer",
        "hinted_handoff_enabled": False,
        "concurrent_compactors": 1,
        "concurrent_reads": 8,
        "concurrent_writes": 8,
        "concurrent_counter_writes": 8,
        "key_cache_size": "16MiB",
        "row_cache_size": "0MiB",
        "counter_cache_size": "4MiB",
        "memtable_heap_space": "128MiB",
        "memtable_offheap_space": "128MiB",
        "dynamic_snitch": False,
        # The stack's keyspaces are truncated and reloaded over and over (tests, demo, benches):
        # a snapshot per TRUNCATE kept every old dataset on disk (3 GB after a day's work).
        "auto_snapshot": False,
    }


def render_yaml(config: dict[str, Any]) -> str:
    body: str = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return "# Generated by tenant_migration.stack.cassandra; rewritten at every start.\n" + body


def logback_xml(log_file: Path) -> str:
    """INFO and up to a size-capped file, WARN and up to stdout.

    The cassandra-all jar ships no logback.xml and logback's fallback is DEBUG to stdout, which
    costs start time and floods the console file.

    ``SelectStatement`` logs a WARN per request for every aggregate over an IN of partitions (the
    gates' fingerprints: hundreds per gate), synchronously, to both appenders -- 640 k lines and a
    130 MB console file in a day of runs; the client is told the same in each response (and the
    driver's log drops it, ``fingerprint._DropAggregateWarning``). Errors still get through.
    """
    return f"""<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>{log_file}</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>{log_file}.%i</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter">
      <level>WARN</level>
    </filter>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <logger name="org.apache.cassandra.cql3.statements.SelectStatement" level="ERROR"/>
  <root level="INFO">
    <appender-ref ref="FILE"/>
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
"""


def jvm_command(java: str, lib: Path, node: CassandraNode, paths: NodePaths, heap: str = HEAP) -> list[str]:
    """The full ``java`` command line of one node (what bin/cassandra would build, minus the shell)."""
    return [
        java,
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-XX:+ParallelRefProcEnabled",
        "-XX:MaxTenuringThreshold=1",
        "-XX:G1HeapRegionSize=16m",
        "-XX:+PerfDisableSharedMem",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.net.preferIPv4Stack=true",
        *JVM17_MODULE_FLAGS,
        f"-javaagent:{lib / JAMM_JAR}",
        "-Dcassandra-foreground=yes",
        f"-Dcassandra.config={paths.yaml_file.as_uri()}",
        f"-Dcassandra.storagedir={paths.storage_dir}",
        f"-Dcassandra.logdir={paths.logs_dir}",
        "-Dcassandra.skip_wait_for_gossip_to_settle=0",
        "-Dcassandra.initial_token=0",
        "-Dcassandra.ring_delay_ms=1000",
        f"-Dcassandra.jmx.local.port={node.jmx_port}",
        f"-Dlogback.configurationFile={paths.logback_file}",
        "-cp",
        f"{lib}/*",
        MAIN_CLASS,
    ]


def write_config(node: CassandraNode, paths: NodePaths) -> None:
    """(Re)write conf/ and create the folders the service user must own; never touches data."""
    own_dir(paths.root)
    own_dir(paths.conf_dir)
    own_dir(paths.storage_dir)
    own_dir(paths.logs_dir)
    paths.yaml_file.write_text(render_yaml(cassandra_yaml(node)))
    paths.logback_file.write_text(logback_xml(paths.log_file))


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
