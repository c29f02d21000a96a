"""Reading a job's result from its pipe: dr_exp's FrameReader against the quadratic reader it
replaced (kept here as the reference), on real pipes from a forked child.

    python benchmarks/bench_pipe.py [--sizes 16,32,64] [--repeats 3]

For each size in MiB, a child process pickles a bytes value of that size into a pipe in one
frame; the parent reads it in 64 KiB chunks and reassembles it.  Runs alternate between the
two readers; the medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import struct
import time

from dr_exp.runner import FrameReader, send_frame

HEADER = struct.Struct("!Q")


class QuadraticReader:
    """The reader before dr_exp 0.2: ``bytes += chunk`` copies the whole buffer each time."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, chunk: bytes) -> list:
        self.buffer += chunk
        out = []
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            if len(self.buffer) < HEADER.size + size:
                break
            out.append(pickle.loads(self.buffer[HEADER.size : HEADER.size + size]))
            self.buffer = self.buffer[HEADER.size + size :]
        return out


def one_run(reader_class: type, mib: int) -> float:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        send_frame(write_fd, {"value": b"x" * (mib << 20)})
        os._exit(0)
    os.close(write_fd)
    reader, got = reader_class(), []
    start = time.perf_counter()
    while True:
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        got += reader.feed(chunk)
    elapsed = time.perf_counter() - start
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert len(got) == 1 and len(got[0]["value"]) == mib << 20
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16,32,64", help="MiB, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'MiB':>5} {'dr_exp s':>10} {'quadratic s':>12} {'ratio':>7}")
    for mib in (int(x) for x in args.sizes.split(",")):
        ours, theirs = [], []
        for _ in range(args.repeats):  # alternated
            ours.append(one_run(FrameReader, mib))
            theirs.append(one_run(QuadraticReader, mib))
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{mib:>5} {a:>10.3f} {b:>12.3f} {b / a:>6.1f}x")


if __name__ == "__main__":
    main()
