"""A hung filesystem, for tests of what a file read that never returns does to the server: a
FUSE filesystem, spoken to over /dev/fuse (no library), holding one regular file whose reads
are never answered, as a network filesystem whose server went away. When it stops, the reads
still waiting fail with EIO and it is unmounted.

Needs root and /dev/fuse (`hung_filesystem` skips the test without them). Run as a script,
it is the filesystem's own process: `python fuse_support.py MOUNTPOINT NAME SIZE SECONDS`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# FUSE opcodes (linux/fuse.h) this filesystem answers.
LOOKUP, GETATTR, OPEN, READ, RELEASE, FLUSH, INIT, OPENDIR, RELEASEDIR, DESTROY = (
    1, 3, 14, 15, 18, 25, 26, 27, 29, 41,
)  # fmt: skip
ENOENT, EIO, ENOSYS = 2, 5, 38
ROOT, FILE = 1, 2
FOPEN_DIRECT_IO = 1


def serve(mountpoint: str, name: str, size: int, seconds: float) -> None:
    fuse = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    options = f"fd={fuse},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    if libc.mount(b"hungfs", mountpoint.encode(), b"fuse.hungfs", 0, options) != 0:
        sys.exit(f"mount failed: {os.strerror(ctypes.get_errno())}")
    now = int(time.time())

    def attributes(node: int) -> bytes:
        mode, length, links = (0o40755, 0, 2) if node == ROOT else (0o100644, size, 1)
        blocks = (length + 511) // 512
        return struct.pack(
            "<QQQQQQIIIIIIIIII",
            node, length, blocks, now, now, now, 0, 0, 0, mode, links, 0, 0, 0, 4096, 0,
        )  # fmt: skip

    def reply(unique: int, payload: bytes = b"", error: int = 0) -> None:
        os.write(fuse, struct.pack("<IiQ", 16 + len(payload), -error, unique) + payload)

    waiting = []
    print("mounted", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not select.select([fuse], [], [], 0.1)[0]:
            continue
        message = os.read(fuse, (1 << 20) + 4096)
        length, opcode, unique, node = struct.unpack_from("<IIQQ", message)
        body = message[40:length]
        if opcode == INIT:
            _major, _minor, readahead, _flags = struct.unpack_from("<IIII", body)
            # Protocol 7.31; max_write 128 KiB, no flags.
            reply(unique, struct.pack("<IIIIHHIIHHI7I", 7, 31, readahead, 0, 16, 12, 131072, 1,
                                      32, 0, 0, *[0] * 7))  # fmt: skip
        elif opcode == LOOKUP:
            if node == ROOT and body.rstrip(b"\0") == name.encode():
                reply(unique, struct.pack("<QQQQII", FILE, 0, 60, 60, 0, 0) + attributes(FILE))
            else:
                reply(unique, error=ENOENT)
        elif opcode == GETATTR:
            reply(unique, struct.pack("<QII", 60, 0, 0) + attributes(node))
        elif opcode in (OPEN, OPENDIR):
            # Direct I/O: every read comes here, none from the page cache.
            reply(unique, struct.pack("<QII", 0, FOPEN_DIRECT_IO, 0))
        elif opcode == READ:
            waiting.append(unique)
            print("read waiting", flush=True)
        elif opcode in (RELEASE, RELEASEDIR, FLUSH):
            reply(unique)
        elif opcode != DESTROY:
            reply(unique, error=ENOSYS)
    for unique in waiting:
        with contextlib.suppress(OSError):
            reply(unique, error=EIO)
    subprocess.run(["umount", "-l", mountpoint], check=False)


@contextlib.contextmanager
def hung_filesystem(tmp_path: Path, name: str, size: int, seconds: float = 60) -> Iterator[Path]:
    """A directory holding `name` (`size` bytes) whose reads hang for `seconds`, or until the
    block ends; skips the test where FUSE cannot be mounted."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root and /dev/fuse to mount a FUSE filesystem")
    mountpoint = tmp_path / "hung"
    mountpoint.mkdir()
    proc = subprocess.Popen(
        [sys.executable, __file__, str(mountpoint), name, str(size), str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        if first.strip() != "mounted":
            proc.wait(timeout=10)
            pytest.skip(f"cannot mount a FUSE filesystem here: {first.strip()}")
        yield mountpoint
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
