"""An order-independent checksum of a PostgreSQL binary COPY stream: ``tm-rowsum``.

The chunk copier hashes the bytes the target loads as they pass (``tm-rowsum --tee`` between the
source and the target ``psql``) and, inside the chunk's target transaction, the same range read
back from the target (``\\copy ... to program 'tm-rowsum'``). The replica is read once per chunk;
both sides hash the same binary encoding (binary COPY already requires identical column types,
so identical values give identical bytes).

The fast path is ``rowsum.c``, compiled on first use with the machine's C compiler into a cache
named after the source's hash (a changed source rebuilds; concurrent first uses race safely:
each compiles to a temporary name and renames). This module is the reference implementation of
the same algorithm (the unit tests pin the C tool to it) and the fallback when no compiler is
found: ``python -m tenant_migration.postgres.rowsum`` takes the same arguments, about 20x slower.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("rowsum.c")
SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
MASK = (1 << 64) - 1
SEED, K1, K2 = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x9FB21C651E98DF25
log = logging.getLogger(__name__)


class StreamError(ValueError):
    """Not a complete binary COPY stream."""


@dataclass(frozen=True)
class StreamSum:
    rows: int
    checksum: str  # "<rows>:<16 hex digits>": what the ledger stores and compares
    bytes: int

    @classmethod
    def parse(cls, line: str) -> StreamSum:
        """``"<rows>:<hex> <bytes>"`` as the tool writes it."""
        try:
            checksum, nbytes = line.split()
            rows = int(checksum.split(":", 1)[0])
            return cls(rows, checksum, int(nbytes))
        except ValueError:
            raise StreamError(f"unreadable tm-rowsum result {line!r}") from None

    def line(self) -> str:
        return f"{self.checksum} {self.bytes}\n"


def row_hash(row: bytes) -> int:
    """The 64-bit hash of one tuple's bytes (field count through last field)."""
    h = SEED ^ ((len(row) * K1) & MASK)
    for i in range(0, len(row), 8):
        h ^= int.from_bytes(row[i:i + 8], "little")
        h = (h * K2) & MASK
        h ^= h >> 29
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & MASK
    return h ^ (h >> 31)


class RowSum:
    """Incremental parser and checksum of one binary COPY stream (``feed`` blocks, ``finish``)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._header = False
        self._trailer = False
        self.rows = 0
        self.sum = 0
        self.bytes = 0

    def feed(self, block: bytes) -> None:
        self.bytes += len(block)
        self._buf += block
        buf, pos = self._buf, 0
        if not self._header:
            if len(buf) < 19:
                return
            if bytes(buf[:11]) != SIGNATURE:
                raise StreamError("not a binary COPY stream")
            ext = int.from_bytes(buf[15:19], "big")
            if len(buf) < 19 + ext:
                return
            pos, self._header = 19 + ext, True
        while not self._trailer and len(buf) - pos >= 2:
            nfields = int.from_bytes(buf[pos:pos + 2], "big", signed=True)
            if nfields == -1:
                self._trailer, pos = True, pos + 2
                break
            if nfields < 0:
                raise StreamError("malformed tuple header")
            end = pos + 2
            for _ in range(nfields):
                if len(buf) - end < 4:
                    break
                flen = int.from_bytes(buf[end:end + 4], "big", signed=True)
                end += 4
                if flen < -1:
                    raise StreamError("malformed field length")
                if flen > 0:
                    if len(buf) - end < flen:
                        break
                    end += flen
            else:
                self.sum = (self.sum + row_hash(bytes(buf[pos:end]))) & MASK
                self.rows += 1
                pos = end
                continue
            break
        if self._trailer and len(buf) > pos:
            raise StreamError("data after the trailer")
        del buf[:pos]

    def finish(self) -> StreamSum:
        if not (self._header and self._trailer):
            raise StreamError("truncated stream (no trailer)")
        return StreamSum(self.rows, f"{self.rows}:{self.sum:016x}", self.bytes)


def stream_checksum(data: bytes) -> StreamSum:
    rs = RowSum()
    rs.feed(data)
    return rs.finish()


# ------------------------------------------------------------------------------------ the tool


def _cache_dir() -> Path:
    if os.environ.get("TM_ROWSUM_DIR"):
        return Path(os.environ["TM_ROWSUM_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "tenant-migration"


def build(cache: Path | None = None) -> Path | None:
    """The compiled tool, built now if this source has not been built yet; None without a C
    compiler (or when the build fails: logged, and the Python fallback is used)."""
    source = SOURCE.read_bytes()
    folder = cache or _cache_dir()
    exe = folder / f"tm-rowsum-{hashlib.sha256(source).hexdigest()[:12]}"
    if exe.exists():
        return exe
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        log.warning("no C compiler: tm-rowsum runs as Python (slower); install gcc for the fast path")
        return None
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tm-rowsum-", dir=folder)
    os.close(fd)
    try:
        done = subprocess.run([cc, "-O2", "-o", tmp, str(SOURCE)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log.warning("building tm-rowsum failed, using the Python fallback: %s", done.stderr.strip())
            return None
        os.chmod(tmp, 0o700)  # only the user that built it runs it
        os.replace(tmp, exe)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return exe


def command() -> list[str]:
    """argv prefix of the tool: the compiled one, else this module under the current Python."""
    exe = build()
    return [str(exe)] if exe else [sys.executable, "-m", "tenant_migration.postgres.rowsum"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="order-independent checksum of a binary COPY stream")
    parser.add_argument("--tee", action="store_true", help="copy stdin to stdout while hashing")
    parser.add_argument("--out", help="where the result goes (default stdout; required with --tee)")
    args = parser.parse_args(argv)
    if args.tee and not args.out:
        parser.error("--tee needs --out")
    rs = RowSum()
    stdin, stdout = sys.stdin.buffer.fileno(), sys.stdout.buffer
    try:
        while block := os.read(stdin, 1 << 20):
            if args.tee:
                stdout.write(block)
            rs.feed(block)
        if args.tee:
            stdout.flush()
        result = rs.finish()
    except StreamError as exc:
        print(f"tm-rowsum: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"tm-rowsum: {exc}", file=sys.stderr)
        return 4
    if args.out:
        Path(args.out).write_text(result.line())
    else:
        sys.stdout.write(result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
