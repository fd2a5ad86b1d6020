"""A versioned registry of compiled DSPy programs.

Each version of a program is stored as DSPy's JSON state (``program.dump_state()``, what ``Module.save("x.json")``
writes) plus a metadata record: semver version, parent version, dataset hash, metric, scores with confidence
intervals, DSPy version, LM profile, optimizer, run id, creation time, the sha256 of the state, and the sha256 of
the metadata itself (``meta_checksum``). Programs are loaded back into a program object the caller gives (a module
or a factory), with both checksums verified first. Nothing is ever unpickled.

Tamper evidence: the checksums catch corruption, not an attacker (anyone who can write the registry can recompute
them). With a signing key (``$DSPYO3_REGISTRY_KEY``, or ``signing_key=``), every version's metadata (which holds the
state's sha256) is signed with HMAC-SHA256 when registered, and a version that is unsigned or whose signature does
not verify is refused when read (``dspyo3 registry verify`` reports it). Loading never applies more than learned
state (:mod:`dspyo3_core.program_state`): a version that carries LM settings, attributes or code is refused.

Trust model: anyone who can write to a registry can write its ``meta.json``, so the factory import path recorded
there (``program``) is only imported and called when the caller trusts it: it is in ``trusted_factories`` /
``[optimize] trusted_programs`` / ``$DSPYO3_TRUSTED_PROGRAMS``, or the caller passes ``trust_registry=True``.

Stages ``dev``, ``staging`` and ``prod`` point at versions; :meth:`ProgramRegistry.promote` moves a version into a
stage and :meth:`ProgramRegistry.rollback` puts the stage back to what it held before.

Storage backends, chosen by URL (:func:`open_registry`):

* a local directory (the default: a path or ``file://``): files written atomically (temp file + ``os.replace``),
  a per-program ``fcntl`` lock around version allocation and stage changes, so concurrent processes registering
  the same program get distinct versions;
* Redis (``redis://`` / ``rediss://``): one hash per program, a Redis lock (``SET NX`` with expiry) around writes;
* any fsspec filesystem (``memory://``, ``s3://``, ``gs://``, ... with the matching fsspec driver installed):
  objects under a prefix, with a lock object created exclusively (object stores without exclusive create give no
  protection against concurrent writers: use one writer, or Redis).

Layout (local directory; the other backends use the same keys)::

    <root>/<name>/versions/<version>/program.json    DSPy JSON state
    <root>/<name>/versions/<version>/meta.json       metadata (+ sha256 of program.json)
    <root>/<name>/stages.json                        {"stages": {"prod": "1.0.2"}, "history": {...}}
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from dspyo3_core.files import loads_json
from dspyo3_core.program_state import UnsafeStateError, apply_state, learned_state
from dspyo3_optimize.common import canonical, now, sha256_hex
from dspyo3_optimize.programs.backends import Backend, open_backend
from dspyo3_optimize.programs.errors import IntegrityError, NotFoundError, RegistryError
from dspyo3_optimize.programs.metadata import (
    SIGNING_KEY_ENV,
    STAGES,
    VERSION_PATTERN,
    Bump,
    ProgramVersion,
    Score,
    check_name,
    load_signing_key,
    metadata_checksum,
    metadata_signature,
    next_version,
    parse_version,
)

BUILTIN_TRUSTED_FACTORIES: tuple[str, ...] = ("dspyo3_optimize.examples:gsm8k_program",
                                              "dspyo3_optimize.examples:qa_program")
"""Factories :meth:`ProgramRegistry.load` calls without further trust: this package's own example programs."""


def _trusted(path: str, patterns: Sequence[str]) -> bool:
    """``path`` is one of ``patterns``: an exact ``module:attr``, or ``module:*`` for the module's public
    top-level attributes."""
    module, _, attr = path.partition(":")
    for pattern in patterns:
        if path == pattern:
            return True
        if pattern.endswith(":*") and module == pattern[:-2] and attr.isidentifier() and not attr.startswith("_"):
            return True
    return False


def trusted_factories_from_settings() -> list[str]:
    """``$DSPYO3_TRUSTED_PROGRAMS`` (comma-separated) and ``[optimize] trusted_programs``."""
    from dspyo3_optimize.settings import optimize_settings

    env = [p.strip() for p in os.environ.get("DSPYO3_TRUSTED_PROGRAMS", "").split(",") if p.strip()]
    return env + list(optimize_settings().trusted_programs)


class ProgramRegistry:
    """Register, list, load, promote and roll back compiled DSPy programs.

    Args:
        backend: a :class:`Backend`, or a URL / directory for :func:`open_backend`.
        lock_timeout: seconds to wait for a program's write lock.
        trusted_factories: factory import paths (``module:attr``, or ``module:*``) that :meth:`load` may import
            and call when they are recorded in a version's metadata; added to ``$DSPYO3_TRUSTED_PROGRAMS``,
            ``[optimize] trusted_programs`` and :data:`BUILTIN_TRUSTED_FACTORIES`.
        trust_registry: call whatever factory the metadata records. Only for registries that nobody but you
            can write to: a recorded factory is code that runs in the loading process.
    """

    def __init__(self, backend: Backend | str | os.PathLike[str], *, lock_timeout: float = 30.0,
                 trusted_factories: Sequence[str] = (), trust_registry: bool = False,
                 signing_key: str | bytes | None = None) -> None:
        self.backend: Backend = open_backend(backend) if isinstance(backend, (str, os.PathLike)) else backend
        self.lock_timeout = lock_timeout
        self.trusted_factories = list(trusted_factories)
        self.trust_registry = trust_registry
        self._signing_key = load_signing_key(signing_key)

    @property
    def signed(self) -> bool:
        """Whether versions are signed when registered and must verify when read (a signing key is set)."""
        return self._signing_key is not None

    @property
    def url(self) -> str:
        """Where the registry lives."""
        return self.backend.url

    # -- writing ------------------------------------------------------------------------------------------------

    def register(self, name: str, program: Any, *, parent: str | None = None, bump: Bump = "patch",
                 version: str | None = None, stage: str | None = "dev", factory: str | None = None,
                 dataset_hash: str | None = None, metric: str | None = None,
                 scores: Mapping[str, Score | float] | None = None, lm_profile: str | None = None,
                 optimizer: Mapping[str, Any] | None = None, run_id: str | None = None, notes: str = "",
                 extra: Mapping[str, Any] | None = None) -> ProgramVersion:
        """Store ``program`` (a ``dspy.Module``, or its ``dump_state()`` dict) as a new version of ``name``.

        The version is allocated under the program's lock: the next ``bump`` after the highest existing one
        (or ``version`` if given and free). Its files are created exclusively, so a writer that outlived its lock
        can never overwrite a version another writer stored: it moves on to the next free version instead.
        ``stage`` (default ``dev``) is pointed at the new version.
        ``factory`` (the import path of a callable that builds the empty program) defaults to the one recorded
        for the parent or latest version.
        Returns the stored metadata.
        """
        import dspy

        check_name(name)
        if stage is not None and stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        state = learned_state(program if isinstance(program, Mapping) else program.dump_state())
        blob = canonical(state)
        checksum = "sha256:" + sha256_hex(blob)  # == state_checksum(state), without serialising it twice
        with self.backend.lock(name, self.lock_timeout):
            keys = self.backend.keys(name, "versions/")  # one listing for both views
            existing = _complete_versions(keys)
            taken = _any_versions(keys)  # also versions a crashed writer left without metadata
            if version is not None:
                parse_version(version)
                if version in taken:
                    raise RegistryError(f"{name} {version} already exists; omit version to get the next one "
                                        f"({next_version(sorted(taken | set(existing)), bump)})")
            if parent is not None and parent not in existing:
                raise NotFoundError(f"parent version {parent!r} of {name!r} does not exist; known: "
                                    f"{', '.join(existing) or 'none'}")
            if factory is None and existing:  # same program name, same structure: keep the factory it had
                with contextlib.suppress(IntegrityError):  # one that does not verify is not carried forward
                    factory = self._meta_at(name, parent or existing[-1]).program
            for _ in range(100):
                the_version = version or next_version(sorted(taken | set(existing)), bump)
                meta = ProgramVersion(
                    name=name, version=the_version, checksum=checksum, parent=parent, program=factory,
                    dataset_hash=dataset_hash, metric=metric,
                    scores={k: v if isinstance(v, Score) else Score(float(v)) for k, v in (scores or {}).items()},
                    dspy_version=getattr(dspy, "__version__", None), lm_profile=lm_profile,
                    optimizer=dict(optimizer) if optimizer else None, run_id=run_id, created_at=now(),
                    notes=notes, extra=dict(extra or {}),
                )
                fields = meta.to_dict()
                if self._signing_key is not None:
                    fields["signature"] = metadata_signature(self._signing_key, fields)
                fields["meta_checksum"] = metadata_checksum(fields)
                # meta.json last: a version exists once its metadata does; both created exclusively
                if (self.backend.put_new(name, f"versions/{the_version}/program.json", blob)
                        and self.backend.put_new(name, f"versions/{the_version}/meta.json", canonical(fields))):
                    break
                if version is not None:
                    raise RegistryError(f"{name} {version} was just written by another writer; omit version to "
                                        "get the next free one")
                taken.add(the_version)  # another writer got there first (its lock expired under it?)
            else:  # pragma: no cover - 100 collisions in a row
                raise RegistryError(f"could not allocate a version of {name!r}: every candidate was taken")
            if stage is not None:
                self._set_stage(name, stage, meta.version)
        return meta

    def find(self, name: str, *, run_id: str, checksum: str | None = None) -> ProgramVersion | None:
        """The newest version of ``name`` registered by run ``run_id`` (and with state ``checksum``), or None.
        What lets a resumed run recognise the version it registered before it was killed."""
        for version in reversed(self.versions(name)):
            meta = self._meta_at(name, version)
            if meta.run_id == run_id and (checksum is None or meta.checksum == checksum):
                return meta
        return None

    def _stages_doc(self, name: str) -> dict[str, Any]:
        raw = self.backend.get(check_name(name), "stages.json")
        if raw is None:
            return {"stages": {}, "history": {}}
        try:
            doc = json.loads(raw)
        except ValueError:
            raise IntegrityError(f"{self.backend.where(name, 'stages.json')} is not valid JSON: the stage file is "
                                 "corrupted; restore it or promote the versions again") from None
        doc.setdefault("stages", {})
        doc.setdefault("history", {})
        return dict(doc)

    def _set_stage(self, name: str, stage: str, version: str) -> str | None:
        doc = self._stages_doc(name)
        previous = doc["stages"].get(stage)
        if previous == version:
            return previous  # type: ignore[no-any-return]
        history = doc["history"].setdefault(stage, [])
        if previous is not None:
            history.append(previous)
        doc["stages"][stage] = version
        doc.setdefault("log", []).append({"at": now(), "stage": stage, "from": previous, "to": version})
        self.backend.put(name, "stages.json", canonical(doc))
        return previous  # type: ignore[no-any-return]

    def promote(self, name: str, version: str | None = None, *, to: str = "staging") -> str:
        """Point stage ``to`` at ``version`` (default: the version in the stage below it, ``dev`` for
        ``staging``, ``staging`` for ``prod``). Returns the version promoted."""
        check_name(name)
        if to not in STAGES:
            raise RegistryError(f"unknown stage {to!r}; stages are {', '.join(STAGES)}")
        with self.backend.lock(name, self.lock_timeout):
            if version is None:
                below = STAGES[max(0, STAGES.index(to) - 1)]
                version = self._stages_doc(name)["stages"].get(below)
                if version is None or below == to:
                    raise RegistryError(f"no version given and stage {below!r} of {name!r} is empty; pass the "
                                        "version to promote")
            else:
                version = self.resolve(name, version)
            self._set_stage(name, to, version)
        return version

    def rollback(self, name: str, stage: str = "prod") -> str:
        """Put ``stage`` back to the version it held before the last promotion; returns that version."""
        check_name(name)
        if stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        with self.backend.lock(name, self.lock_timeout):
            doc = self._stages_doc(name)
            history = doc["history"].get(stage) or []
            if not history:
                raise RegistryError(f"stage {stage!r} of {name!r} has no earlier version to roll back to")
            current = doc["stages"].get(stage)
            previous = history.pop()
            doc["stages"][stage] = previous
            doc.setdefault("log", []).append({"at": now(), "stage": stage, "from": current, "to": previous,
                                              "rollback": True})
            self.backend.put(name, "stages.json", canonical(doc))
        return str(previous)

    # -- reading ------------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Registered program names."""
        return self.backend.names()

    def exists(self) -> bool:
        """Whether there is a registry at :attr:`url` at all (possibly an empty one), as opposed to a path or URL
        that holds no registry (a mistyped directory, a command run outside the registry's directory). Backends
        without an ``exists()`` method are assumed to exist."""
        exists = getattr(self.backend, "exists", None)
        return True if exists is None else bool(exists())

    def versions(self, name: str) -> list[str]:
        """Versions of ``name`` in semver order (only complete ones: metadata written)."""
        return _complete_versions(self.backend.keys(check_name(name), "versions/"))

    def stages(self, name: str) -> dict[str, str]:
        """Stage -> version."""
        return dict(self._stages_doc(name)["stages"])

    def resolve(self, name: str, ref: str | None = None) -> str:
        """A version from ``ref``: a version, a stage name, ``"latest"`` or None (latest)."""
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise NotFoundError(f"no program {name!r} in the registry at {self.url}; registered: {known}")
        if ref is None or ref == "latest":
            return versions[-1]
        if ref in STAGES:
            version = self.stages(name).get(ref)
            if version is None:
                raise NotFoundError(f"stage {ref!r} of {name!r} is empty; promote a version first "
                                    f"(dspyo3 registry promote {name} VERSION --to {ref})")
            return str(version)
        if ref.lstrip("v") in versions:
            return ref.lstrip("v")
        raise NotFoundError(f"{name} has no version {ref!r}; versions: {', '.join(versions)}; stages: "
                            f"{', '.join(STAGES)}")

    def meta(self, name: str, ref: str | None = None) -> ProgramVersion:
        """Metadata of a version (``ref`` as in :meth:`resolve`). An exact version is read directly (no listing
        of the backend); a stage, ``latest`` or a missing version goes through :meth:`resolve`."""
        exact = ref.lstrip("v") if ref is not None else None
        if exact is not None and VERSION_PATTERN.match(exact):
            with contextlib.suppress(NotFoundError):
                return self._meta_at(check_name(name), exact)
        return self._meta_at(name, self.resolve(name, ref))

    def _meta_at(self, name: str, version: str) -> ProgramVersion:
        """The verified metadata of ``version`` exactly (no :meth:`resolve`, so no listing of the backend)."""
        key = f"versions/{version}/meta.json"
        where = self.backend.where(name, key)
        raw = self.backend.get(name, key)
        if raw is None:
            raise NotFoundError(f"{where} is missing")
        try:
            fields = loads_json(raw, source=where)
            if not isinstance(fields, dict):
                raise TypeError("not a JSON object")
            recorded = fields.pop("meta_checksum", None)
            meta = ProgramVersion.from_dict({k: v for k, v in fields.items() if k != "signature"})
        except (ValueError, TypeError) as exc:
            raise IntegrityError(f"{where} is not valid metadata ({exc}): the file is corrupted; restore it or "
                                 "delete the version") from None
        actual = metadata_checksum(fields)
        if recorded != actual:
            raise IntegrityError(f"metadata checksum mismatch for {where}: expected {recorded}, found {actual}; the "
                                 "metadata was modified or corrupted after registration. Restore it from a backup "
                                 "or register the program again as a new version")
        if self._signing_key is not None:
            import hmac

            signature = fields.get("signature")
            if not isinstance(signature, str):
                raise IntegrityError(f"{where} is not signed, and this registry requires signed versions "
                                     f"({SIGNING_KEY_ENV} is set): register the program again with the key set, "
                                     "or unset the key to read unsigned versions")
            if not hmac.compare_digest(signature, metadata_signature(self._signing_key, fields)):
                raise IntegrityError(f"signature of {where} does not verify with the registry key: the version was "
                                     "modified or registered with another key; do not load it. Register the "
                                     "program again from a trusted source")
        if meta.version != version or meta.name != name:
            raise IntegrityError(f"{where} describes {meta.name} {meta.version}, not {name} {version}: it was "
                                 "copied or moved; restore the right file")
        return meta

    def state(self, name: str, ref: str | None = None) -> tuple[dict[str, Any], ProgramVersion]:
        """The verified DSPy JSON state of a version and its metadata.

        Raises:
            IntegrityError: the stored state's sha256 differs from the one recorded at registration, or it is
                not valid JSON; the message names the file.
        """
        meta = self.meta(name, ref)
        key = f"versions/{meta.version}/program.json"
        where = self.backend.where(name, key)
        blob = self.backend.get(name, key)
        if blob is None:
            raise IntegrityError(f"{where} is missing although {name} {meta.version} is registered; restore it "
                                 "or register the program again")
        actual = "sha256:" + sha256_hex(blob)
        if actual != meta.checksum:
            raise IntegrityError(f"checksum mismatch for {where}: expected {meta.checksum}, found {actual}; the "
                                 "artifact was modified or corrupted after registration. Restore it from a backup "
                                 "or register the program again as a new version")
        try:
            state = loads_json(blob, source=where)
        except ValueError:
            raise IntegrityError(f"{where} is not valid JSON (or nested too deeply to read) although its checksum "
                                 "matches") from None
        if not isinstance(state, dict):
            raise IntegrityError(f"{where} does not hold a DSPy program state (a JSON object)")
        return state, meta

    def load(self, name: str, ref: str | None = None, program: Any = None, *,
             trust_registry: bool | None = None) -> Any:
        """Load a version into ``program``: a ``dspy.Module`` with the same structure (loaded in place), a
        callable that builds one, or the import path (``module:attr``) of either. The checksums are verified
        first; JSON only, never pickle.

        Without ``program``, the factory recorded at registration is used only when it is trusted (see the
        class docstring: ``trusted_factories``, ``[optimize] trusted_programs``, ``$DSPYO3_TRUSTED_PROGRAMS``,
        ``trust_registry``): metadata in a shared registry is not code you chose to run.
        """
        state, meta = self.state(name, ref)
        if program is None:
            program = self._recorded_factory(meta, self.trust_registry if trust_registry is None else trust_registry)
        program = _instantiate(program)
        where = f"{self.backend.where(name, f'versions/{meta.version}/program.json')}"
        try:
            apply_state(program, state, source=where)
        except UnsafeStateError as exc:
            raise IntegrityError(str(exc)) from None
        except (KeyError, AttributeError, TypeError, ValueError) as exc:
            raise RegistryError(f"{name} {meta.version} does not fit the program it is loaded into "
                                f"({type(program).__name__}): {type(exc).__name__}: {exc}; build the same module "
                                "structure it was saved from") from None
        return program

    def _recorded_factory(self, meta: ProgramVersion, trust: bool) -> str:
        if not meta.program:
            raise RegistryError(f"{meta.name} {meta.version} was registered without a program factory; pass "
                                "program=<a module of the same structure, or a factory> (CLI: --program "
                                "module:attr) to load it into")
        patterns = [*BUILTIN_TRUSTED_FACTORIES, *self.trusted_factories, *trusted_factories_from_settings()]
        if not trust and not _trusted(meta.program, patterns):
            raise RegistryError(
                f"{meta.name} {meta.version} records the program factory {meta.program!r}, which is not trusted: "
                f"metadata in {self.url} can be written by anyone with write access to the registry, so its import "
                "paths are not run by default. Either pass the program yourself (program=<module or factory>; "
                f"CLI: --program {meta.program}), or trust this factory (trusted_factories=[{meta.program!r}], "
                f"[optimize] trusted_programs = [\"{meta.program}\"] or DSPYO3_TRUSTED_PROGRAMS={meta.program}), "
                "or, if nobody else can write to this registry, pass trust_registry=True (CLI: --trust-registry)")
        return meta.program

    def diff(self, name: str, a: str, b: str) -> dict[str, Any]:
        """What changed between two versions: metadata fields and, per predictor, instructions and demos."""
        state_a, meta_a = self.state(name, a)
        state_b, meta_b = self.state(name, b)
        da, db = meta_a.to_dict(), meta_b.to_dict()
        ignore = {"version", "checksum", "created_at"}
        meta_changes = {k: {"a": da.get(k), "b": db.get(k)} for k in sorted(set(da) | set(db))
                        if k not in ignore and da.get(k) != db.get(k)}
        state_a, state_b = _by_predictor(state_a), _by_predictor(state_b)
        predictors: dict[str, Any] = {}
        for key in sorted(set(state_a) | set(state_b)):
            pa, pb = state_a.get(key), state_b.get(key)
            if pa == pb or not isinstance(pa, dict) or not isinstance(pb, dict):
                if pa != pb:
                    predictors[key] = {"a": pa, "b": pb}
                continue
            change: dict[str, Any] = {}
            ia = (pa.get("signature") or {}).get("instructions")
            ib = (pb.get("signature") or {}).get("instructions")
            if ia != ib:
                change["instructions"] = {"a": ia, "b": ib}
            demos_a, demos_b = pa.get("demos") or [], pb.get("demos") or []
            if demos_a != demos_b:
                change["demos"] = {"a": len(demos_a), "b": len(demos_b),
                                   "added": sum(d not in demos_a for d in demos_b),
                                   "removed": sum(d not in demos_b for d in demos_a)}
            other = sorted(k for k in set(pa) | set(pb) if k not in ("signature", "demos") and pa.get(k) != pb.get(k))
            if other:
                change["other"] = other
            if change:
                predictors[key] = change
        return {"name": name, "a": meta_a.version, "b": meta_b.version, "metadata": meta_changes,
                "predictors": predictors, "same_program": meta_a.checksum == meta_b.checksum}

    def verify(self, name: str) -> list[str]:
        """Check every version's checksum; returns the problems found (empty when all is well)."""
        problems = []
        for version in self.versions(name):
            try:
                self.state(name, version)
            except RegistryError as exc:
                problems.append(str(exc))
        return problems


def _complete_versions(keys: Sequence[str]) -> list[str]:
    """Versions (semver order) whose metadata is among ``keys`` (a listing under ``versions/``)."""
    found = {k.split("/")[1] for k in keys if k.endswith("/meta.json") and k.count("/") >= 2}
    return sorted((v for v in found if VERSION_PATTERN.match(v)), key=parse_version)


def _any_versions(keys: Sequence[str]) -> set[str]:
    """Versions with any stored file among ``keys`` (complete or not)."""
    return {k.split("/")[1] for k in keys if k.count("/") >= 2 and VERSION_PATTERN.match(k.split("/")[1])}


def _instantiate(program: Any) -> Any:
    """A module to load state into from a module (used as is), a factory, or an import path of either."""
    if isinstance(program, str):
        from dspyo3_optimize.metrics import import_object

        program = import_object(program)
        if hasattr(program, "load_state"):  # a module-level instance: never load into the shared object
            return program.deepcopy()
    if hasattr(program, "load_state"):
        return program
    if callable(program):
        made = program()
        if not hasattr(made, "load_state"):
            raise RegistryError(f"the program factory returned a {type(made).__name__}, not a dspy.Module")
        return made
    raise RegistryError(f"program= must be a dspy.Module, a callable that builds one, or its import path; got a "
                        f"{type(program).__name__}")


def _by_predictor(state: dict[str, Any]) -> dict[str, Any]:
    """A program state keyed by predictor name (a bare ``Predict``'s flat state becomes ``{"self": state}``)."""
    return {"self": state} if "signature" in state and "demos" in state else state


def open_registry(url: str | os.PathLike[str] | None = None, **options: Any) -> ProgramRegistry:
    """The registry at ``url``; default: ``$DSPYO3_REGISTRY``, else ``[optimize] registry`` in ``dspyo3.toml``,
    else ``./dspyo3-registry``. ``options`` go to :class:`ProgramRegistry` (``trusted_factories``,
    ``trust_registry``, ``lock_timeout``)."""
    if url is None:
        url = os.environ.get("DSPYO3_REGISTRY")
    if url is None:
        from dspyo3_optimize.settings import optimize_settings

        url = optimize_settings().registry
    return ProgramRegistry(url, **options)
