"""The registry of compiled DSPy programs, in three parts:

* :mod:`~dspyo3_optimize.programs.backends` — where the bytes live: a local directory, Redis, or fsspec;
* :mod:`~dspyo3_optimize.programs.metadata` — what each version records (names, semver, scores) and its checks
  (metadata checksum, HMAC signature);
* :mod:`~dspyo3_optimize.programs.registry` — :class:`ProgramRegistry`: register, load, promote, roll back, verify.

:mod:`dspyo3_optimize.registry` re-exports the public names of all three.
"""
