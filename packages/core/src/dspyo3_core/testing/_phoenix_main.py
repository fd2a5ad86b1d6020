"""``phoenix serve`` with its OTLP gRPC listener on 127.0.0.1 instead of the hard-coded ``[::]``.

:class:`dspyo3_core.testing.phoenix.PhoenixProcess` runs this file with the Python interpreter that has Arize
Phoenix installed (this environment's, or the one beside ``$DSPYO3_PHOENIX``), so it imports nothing from dspyo3:
it must run in an environment where only Phoenix is installed. The HTTP listener already honours ``PHOENIX_HOST``;
gRPC's ``add_insecure_port`` is given ``[::]:PORT`` by Phoenix, which this rewrites to ``127.0.0.1:PORT`` so a test
never opens a port on every interface.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def main() -> int:
    # run as a file, its own directory is sys.path[0], and that directory holds dspyo3's phoenix.py, which would
    # shadow the arize-phoenix package
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    grpc_server: Any = importlib.import_module("grpc.aio._server")  # untyped: grpc ships no stubs
    original = grpc_server.Server.add_insecure_port

    def loopback(self: Any, address: str) -> Any:
        return original(self, address.replace("[::]:", "127.0.0.1:").replace("0.0.0.0:", "127.0.0.1:"))

    grpc_server.Server.add_insecure_port = loopback
    phoenix_main: Any = importlib.import_module("phoenix.server.main").main

    sys.argv = ["phoenix", "serve"]
    result = phoenix_main()
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
