"""``python -m dspyo3_core.testing``: run the loopback LM server (see :func:`dspyo3_core.testing.server.main`)."""

from dspyo3_core.testing.server import main

raise SystemExit(main())
