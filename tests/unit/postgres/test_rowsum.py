"""tm-rowsum, the C checksum tool of the chunk copier, pinned to its Python reference on crafted
binary COPY streams: same result, order-independent, NULL differs from '', tuples larger than
its buffer, header extensions, and malformed or truncated streams refused."""

from __future__ import annotations

import random
import struct
import subprocess
import sys

import pytest

from tenant_migration.postgres import rowsum
from tenant_migration.postgres.rowsum import RowSum, StreamError, StreamSum, stream_checksum

Row = tuple[bytes | None, ...]


def encode(rows: list[Row], ext: bytes = b"", trailer: bool = True) -> bytes:
    out = [rowsum.SIGNATURE, struct.pack("!ii", 0, len(ext)), ext]
    for row in rows:
        out.append(struct.pack("!h", len(row)))
        for field in row:
            out.append(struct.pack("!i", -1) if field is None else struct.pack("!i", len(field)) + field)
    if trailer:
        out.append(struct.pack("!h", -1))
    return b"".join(out)


ROWS: list[Row] = [(struct.pack("!q", i), f"device-{i}".encode(), None if i % 3 else b"") for i in range(500)]


@pytest.fixture(scope="module")
def tool(tmp_path_factory) -> str:
    exe = rowsum.build(tmp_path_factory.mktemp("rowsum"))
    if exe is None:
        pytest.skip("no C compiler on this machine")
    return str(exe)


def run(tool: str, data: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([tool, *args], input=data, capture_output=True, check=False)


def test_c_tool_and_python_reference_agree(tool) -> None:
    data = encode(ROWS, ext=b"\x01\x02\x03")
    done = run(tool, data)
    assert done.returncode == 0, done.stderr
    got = StreamSum.parse(done.stdout.decode())
    assert got == stream_checksum(data)
    assert got.rows == 500 and got.bytes == len(data)


def test_order_does_not_matter_but_every_value_does() -> None:
    shuffled = ROWS[:]
    random.Random(7).shuffle(shuffled)
    base = stream_checksum(encode(ROWS)).checksum
    assert stream_checksum(encode(shuffled)).checksum == base
    changed = ROWS[:]
    changed[42] = (changed[42][0], b"device-42!", changed[42][2])
    assert stream_checksum(encode(changed)).checksum != base
    nulled = ROWS[:]
    nulled[0] = (nulled[0][0], nulled[0][1], None)  # row 0 had '' in the last column
    assert stream_checksum(encode(nulled)).checksum != base
    doubled = ROWS + ROWS[:1]
    assert stream_checksum(encode(doubled)).checksum.split(":")[0] == "501"


def test_swapping_values_between_rows_is_caught() -> None:
    a, b = (b"1", b"x"), (b"2", b"y")
    assert stream_checksum(encode([a, b])).checksum != stream_checksum(encode([(b"1", b"y"), (b"2", b"x")])).checksum


def test_tuples_larger_than_the_read_buffer_and_tee_passes_bytes_unchanged(tool, tmp_path) -> None:
    big = [(b"k%d" % i, bytes([i]) * (3 << 20)) for i in range(3)] + ROWS
    data = encode(big)
    out = tmp_path / "sum"
    done = run(tool, data, "--tee", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == data
    assert StreamSum.parse(out.read_text()) == stream_checksum(data)


def test_python_reference_fed_in_small_blocks_matches_one_block() -> None:
    data = encode(ROWS, ext=b"abc")
    rs = RowSum()
    for i in range(0, len(data), 7):
        rs.feed(data[i:i + 7])
    assert rs.finish() == stream_checksum(data)


@pytest.mark.parametrize(("data", "why"), [
    (b"not a copy stream at all", "not a binary COPY stream"),
    (encode(ROWS, trailer=False), "truncated stream"),
    (encode(ROWS)[:-9], "truncated stream"),
    (encode(ROWS) + b"\x00", "data after the trailer"),
])
def test_malformed_streams_are_refused(tool, data, why) -> None:
    done = run(tool, data)
    assert done.returncode == 3 and why in done.stderr.decode()
    with pytest.raises(StreamError, match=why):
        stream_checksum(data)


def test_python_fallback_tool_takes_the_same_arguments(tmp_path) -> None:
    data = encode(ROWS)
    out = tmp_path / "sum"
    done = subprocess.run([sys.executable, "-m", "tenant_migration.postgres.rowsum", "--tee", "--out", str(out)],
                          input=data, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data and StreamSum.parse(out.read_text()) == stream_checksum(data)
    bad = subprocess.run([sys.executable, "-m", "tenant_migration.postgres.rowsum"], input=data[:-2],
                         capture_output=True, check=False)
    assert bad.returncode == 3 and b"truncated" in bad.stderr
