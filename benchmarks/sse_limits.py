"""How long the native transport takes to finish (or refuse) a stream whose one ``data:`` line never ends.

A raw loopback server (its own process) answers a streaming chat request with ``HTTP 200 text/event-stream`` and
one ``data:`` line of ``--sizes`` megabytes and no newline, written in 8 KiB pieces, then closes. Two clients read
the same bytes from the same server:

- ``native``: ``dspyo3_native.LMTransport.stream`` with its default limits (16 MiB per event): a line shorter than
  that is read to the end and reported as a malformed stream, a longer one is refused once it passes 16 MiB.
- ``anchor``: a plain Python socket client reading 8 KiB at a time and looking for the end of the line with
  ``bytearray.find`` from where the previous scan stopped (a linear line splitter, no parsing), stopping at the
  same 16 MiB limit.

Both times cover connecting, sending the request and reading the answer up to the end or the limit; the best of
``--repeat`` runs is kept. A parser that rescans its buffer on every read grows quadratically with the line;
a linear one stays within a small factor of the anchor at every size.

    python benchmarks/sse_limits.py [--sizes 4,16,50] [--repeat 3] [--json F]

Last line: ``{"sizes_mb": [...], "native_s": {...}, "anchor_s": {...}, "ratio": {...}, "outcome": {...}}`` with
ratio = native / anchor per size.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, log

LIMIT = 16 * 1024 * 1024  # the transport's default max_event_bytes
PIECE = 8192
REQUEST_BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}'


def serve(size: int) -> None:
    """Serve the endless-line stream (``size`` bytes of line) to every connection, one at a time, until killed."""
    from dspyo3_core.testing.rawhttp import RawServer

    piece = b"x" * PIECE

    def endless_line(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: ")
        for _ in range(size // PIECE):
            conn.sendall(piece)

    server = RawServer(endless_line)
    print(server.port, flush=True)
    server.thread.join()


def native_run(port: int) -> tuple[float, str]:
    import dspyo3_native

    transport = dspyo3_native.LMTransport(f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=60.0)
    started = time.perf_counter()
    try:
        for _ in transport.stream("m", [{"role": "user", "content": "hi"}]):
            pass
        outcome = "ended"
    except dspyo3_native.LMTransportError as exc:
        outcome = str(exc.args[1])
    return time.perf_counter() - started, outcome


def anchor_run(port: int) -> tuple[float, str]:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(REQUEST_BODY), REQUEST_BODY))
        buffer = bytearray()
        scanned = 0
        lines = 0
        outcome = "ended"
        while True:
            piece = conn.recv(PIECE)
            if not piece:
                break
            buffer += piece
            start = 0
            at = buffer.find(b"\n", scanned)
            while at >= 0:
                lines += 1
                start = at + 1
                at = buffer.find(b"\n", start)
            if start:
                del buffer[:start]
            scanned = len(buffer)
            if len(buffer) > LIMIT:
                outcome = "too_large"
                break
    return time.perf_counter() - started, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4,16,50", help="line sizes in MB (10^6 bytes), comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    result: dict[str, Any] = {"sizes_mb": sizes, "piece_bytes": PIECE, "limit_bytes": LIMIT, "native_s": {},
                              "anchor_s": {}, "ratio": {}, "outcome": {}}
    for size in sizes:
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(size * 1_000_000)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            native = min(native_run(port) for _ in range(args.repeat))
            anchor = min(anchor_run(port) for _ in range(args.repeat))
        finally:
            server.terminate()
            server.wait(10)
        key = f"{size}MB"
        result["native_s"][key] = round(native[0], 4)
        result["anchor_s"][key] = round(anchor[0], 4)
        result["ratio"][key] = round(native[0] / anchor[0], 2)
        result["outcome"][key] = {"native": native[1], "anchor": anchor[1]}
        log(f"{key}: native {native[0]:.3f}s ({native[1]}), anchor {anchor[0]:.3f}s ({anchor[1]})")
    emit(result, args.json_path, None)


if __name__ == "__main__":
    main()
