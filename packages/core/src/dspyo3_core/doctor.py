"""``dspyo3 doctor``: validate the environment and say how to fix what is wrong.

Each check returns a :class:`Check` with ``status`` ``ok``, ``warn`` or ``fail``, a ``detail`` and a ``fix``
(what to do, empty when nothing is needed). ``--fix`` applies only safe fixes (creating the cache directory)
and reports what it did.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from dspyo3_core.config import ConfigError, Settings, load_settings
from dspyo3_core.plugins import PluginManager

Status = Literal["ok", "warn", "fail"]

SUPPORTED_PYTHON = SpecifierSet(">=3.10,<3.15")
SUPPORTED_DSPY = SpecifierSet(">=3.0,<4")
PACKAGES = ("core", "types", "rag", "agents", "async", "production", "optimize")
NEEDS_NATIVE = {"dspyo3-rag", "dspyo3-async", "dspyo3-production"}


@dataclass(frozen=True)
class Check:
    """One doctor finding."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "status", "detail", "fix"}``."""
        return asdict(self)


@dataclass
class DoctorReport:
    """All checks plus the fixes ``--fix`` applied."""

    checks: list[Check]
    fixed: list[str]

    @property
    def failed(self) -> bool:
        """Any check has status ``fail``."""
        return any(check.status == "fail" for check in self.checks)

    def to_dict(self) -> dict[str, Any]:
        """``{"checks": [...], "fixed": [...]}``."""
        return {"checks": [check.to_dict() for check in self.checks], "fixed": list(self.fixed)}


def check_python() -> Check:
    """Python version against :data:`SUPPORTED_PYTHON`."""
    version = ".".join(map(str, sys.version_info[:3]))
    if Version(version) in SUPPORTED_PYTHON:
        return Check("python", "ok", f"Python {version} ({sys.executable})")
    return Check("python", "fail", f"Python {version} is not supported ({SUPPORTED_PYTHON})",
                 "use a Python 3.10-3.14 interpreter")


def check_dspy() -> Check:
    """DSPy installed and within :data:`SUPPORTED_DSPY`."""
    try:
        version = metadata.version("dspy")
    except metadata.PackageNotFoundError:
        return Check("dspy", "fail", "DSPy is not installed", f"pip install 'dspy{SUPPORTED_DSPY}'")
    if Version(version) in SUPPORTED_DSPY:
        return Check("dspy", "ok", f"dspy {version}")
    return Check("dspy", "fail", f"dspy {version} is outside the supported range {SUPPORTED_DSPY}",
                 f"pip install 'dspy{SUPPORTED_DSPY}'")


def installed_packages() -> dict[str, str]:
    """Installed dspyo3 distributions and their versions."""
    found = {}
    for name in [f"dspyo3-{p}" for p in PACKAGES] + ["dspyo3-native"]:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def check_packages(manager: PluginManager) -> list[Check]:
    """One check per installed dspyo3 package: installed version, and whether its plugin loaded."""
    infos = {info.distribution: info for info in manager.plugins()}
    checks = []
    for dist, version in sorted(installed_packages().items()):
        if dist == "dspyo3-native":
            continue
        info = infos.get(dist)
        if info is None or info.status == "loaded":
            checks.append(Check(f"package {dist}", "ok", f"{dist} {version}"))
        elif info.status == "disabled":
            checks.append(Check(f"package {dist}", "warn", f"{dist} {version}: plugin disabled ({info.error})",
                                "unset DSPYO3_PLUGINS / DSPYO3_DISABLE_PLUGINS to load it"))
        else:
            checks.append(Check(f"package {dist}", "fail", f"{dist} {version}: plugin failed: {info.error}",
                                f"reinstall it: pip install --force-reinstall {dist}"))
    for info in manager.plugins():
        if info.status == "failed" and (info.distribution or "") not in installed_packages():
            checks.append(Check(f"plugin {info.name}", "warn", f"third-party plugin {info.name!r} "
                                f"({info.distribution}) failed to load: {info.error}",
                                f"fix or uninstall {info.distribution}, or DSPYO3_DISABLE_PLUGINS={info.name}"))
    return checks


def check_native() -> Check:
    """``dspyo3_native`` importable; a failure only when a package that needs it is installed."""
    try:
        import dspyo3_native
    except ImportError as exc:
        needing = sorted(NEEDS_NATIVE & set(installed_packages()))
        status: Status = "fail" if needing else "warn"
        who = f" (needed by {', '.join(needing)})" if needing else " (not needed by the installed packages)"
        return Check("native", status, f"dspyo3_native is not importable: {exc}{who}",
                     "pip install ./crates/dspyo3-native (needs a Rust toolchain)")
    return Check("native", "ok", f"dspyo3_native {dspyo3_native.__version__}: {dspyo3_native.build_info()}")


def _probe_url(api_base: str) -> str:
    base = api_base.rstrip("/")
    return base + "/models" if base.endswith("/v1") else base + "/v1/models"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow redirects: the probe carries the API key, which must not go to another host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def check_lm(settings: Settings, manager: PluginManager, *, timeout: float = 3.0) -> list[Check]:
    """An LM profile is configured and valid, its key is present, and its endpoint answers."""
    from dspyo3_core.config import build_lm

    try:
        profile = settings.profile()
    except ConfigError as exc:
        if settings.default_profile is not None:  # a default that names no profile is a mistake, not an absence
            return [Check("lm profile", "fail", str(exc),
                          f"define [lm.profiles.{settings.default_profile}] or set [lm] default to a profile that "
                          "exists (see `dspyo3 lm list`)")]
        return [Check("lm profile", "warn", str(exc),
                      "set DSPYO3_LM=provider/model, or add a profile to dspyo3.toml (see `dspyo3 lm list`)")]
    providers = manager.lm_providers()
    if profile.provider not in providers:
        return [Check("lm profile", "fail", f"profile {profile.name!r} names unknown provider {profile.provider!r}",
                      f"use one of: {', '.join(providers.names())}")]
    spec = providers.get(profile.provider)
    try:
        build_lm(profile, plugin_manager=manager)
    except ConfigError as exc:
        return [Check("lm profile", "fail", str(exc), "fix the profile as the message says")]
    except ImportError as exc:  # e.g. transport = "native" without the dspyo3-native extension
        return [Check("lm profile", "fail", f"profile {profile.name!r}: {exc}", "install what the message names")]
    if spec.transport == "offline":  # no key, no endpoint; say plainly that its answers come from no model
        from dspyo3_core.offline import OFFLINE_SHORT_LABEL

        model = "offline/" + profile.model.removeprefix("offline/")
        return [Check("lm profile", "ok", f"{profile.name}: {model} is the {OFFLINE_SHORT_LABEL}: answers "
                      f"are copied from the prompt (from {profile.source}); set DSPYO3_LM=provider/model for a "
                      "real LM")]
    checks = [Check("lm profile", "ok", f"{profile.name}: {profile.litellm_model(spec)} (from {profile.source})")]
    missing = [k for k, env in spec.extra_env.items() if k not in profile.params and not os.environ.get(env)]
    if missing:
        names = ", ".join(spec.extra_env[k] for k in missing)
        checks.append(Check("lm settings", "fail", f"provider {spec.name!r} needs {', '.join(missing)}",
                            f"export {names}=... or add {missing[0]} = \"...\" to profile {profile.name!r}"))
    key, source = profile.resolve_key(spec)
    if spec.key_env and spec.key_required and key is None:
        checks.append(Check("lm key", "fail", f"no API key for provider {spec.name!r}",
                            f"export {spec.key_env[0]}=... (never commit it to dspyo3.toml)"))
        return checks
    if key is not None:
        checks.append(Check("lm key", "ok", f"key found in {source} (value not shown)"))
    api_base = profile.effective_api_base(spec)
    if not api_base:
        checks.append(Check("lm reachable", "ok", f"hosted provider {spec.name!r}; use `dspyo3 lm test "
                            f"{profile.name}` to send a real request"))
        return checks
    url = _probe_url(api_base)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    opener = urllib.request.build_opener(_NoRedirect)
    started = time.perf_counter()
    try:
        with opener.open(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        checks.append(Check("lm reachable", "fail", f"{api_base} did not answer: {reason}",
                            f"start the server at {api_base} or fix api_base in profile {profile.name!r}"))
        return checks
    elapsed = (time.perf_counter() - started) * 1000
    if 200 <= status < 300:
        checks.append(Check("lm reachable", "ok", f"{url} answered HTTP {status} in {elapsed:.0f} ms"))
    elif status in (401, 403):
        checks.append(Check("lm reachable", "fail", f"{url} refused the key (HTTP {status})",
                            "check the API key for this profile"))
    elif 300 <= status < 400:
        checks.append(Check("lm reachable", "warn", f"{url} redirects (HTTP {status}); not followed, so the key "
                            "is not sent elsewhere", "point api_base at the final URL"))
    else:
        checks.append(Check("lm reachable", "warn", f"{url} answered HTTP {status}; the server is up but has no "
                            "model list there", f"check api_base, then `dspyo3 lm test {profile.name}`"))
    return checks


def _redis_ping(url: str, timeout: float) -> str:
    parsed = urllib.parse.urlparse(url)
    password = parsed.password or urllib.parse.parse_qs(parsed.query).get("password", [None])[0]
    user = urllib.parse.unquote(parsed.username or "default")
    if parsed.scheme == "rediss":
        raise ValueError("rediss:// (TLS) is not probed by doctor; check it with redis-cli --tls")
    if parsed.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(parsed.path)
    elif parsed.scheme == "redis":
        sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=timeout)
    else:
        raise ValueError(f"unsupported scheme {parsed.scheme!r}; use redis://, rediss:// or unix://")
    with sock:
        if password:
            sock.sendall(_resp(["AUTH", user, urllib.parse.unquote(password)]))
            if not sock.recv(256).startswith(b"+OK"):
                raise ConnectionError("AUTH was refused")
        sock.sendall(_resp(["PING"]))
        return sock.recv(64).decode(errors="replace").strip()


def _resp(parts: list[str]) -> bytes:
    out = f"*{len(parts)}\r\n"
    for part in parts:
        out += f"${len(part.encode())}\r\n{part}\r\n"
    return out.encode()


def redact_url(url: str) -> str:
    """``url`` with any password (userinfo or ``?password=``) replaced by ``****``; safe to print."""
    try:
        parsed = urllib.parse.urlparse(url)
        netloc = parsed.netloc
        if "@" in netloc:
            userinfo, _, host = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:****@{host}" if ":" in userinfo else netloc
        query = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
        masked = [(k, "****" if k.lower() in {"password", "pass", "pwd"} else v) for k, v in query]
        return parsed._replace(netloc=netloc, query=urllib.parse.urlencode(masked, safe="*")).geturl()
    except ValueError:
        return "<unparseable URL>"


def check_redis(settings: Settings, *, timeout: float = 2.0) -> Check:
    """Redis answers PING when a URL is configured (``DSPYO3_REDIS_URL`` or ``[redis] url``)."""
    if not settings.redis_url:
        return Check("redis", "ok", "no Redis configured (in-process cache and limits are used)")
    shown = redact_url(settings.redis_url)
    try:
        reply = _redis_ping(settings.redis_url, timeout)
    except (OSError, ValueError, ConnectionError) as exc:
        return Check("redis", "fail", f"{shown}: {type(exc).__name__}: {exc}",
                     "start redis-server (apt-get install redis-server) or fix DSPYO3_REDIS_URL")
    if reply != "+PONG":
        return Check("redis", "fail", f"{shown} answered {reply[:40]!r} to PING", "check the Redis URL and password")
    return Check("redis", "ok", f"{shown} answered PONG")


def check_cache_dir(settings: Settings) -> Check:
    """The cache directory exists and is writable."""
    path = settings.cache_dir
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
            return Check("cache dir", "fail", f"{path} does not exist and cannot be created under {parent}",
                         "set DSPYO3_CACHE_DIR to a writable directory")
        return Check("cache dir", "warn", f"{path} does not exist yet", f"mkdir -p {path}  (or run doctor --fix)")
    if not path.is_dir():
        return Check("cache dir", "fail", f"{path} is not a directory", "set DSPYO3_CACHE_DIR to a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dspyo3-doctor-"):
            pass
    except OSError as exc:
        return Check("cache dir", "fail", f"{path} is not writable: {exc.strerror}",
                     f"chmod u+w {path} or set DSPYO3_CACHE_DIR to a writable directory")
    return Check("cache dir", "ok", f"{path} is writable")


def fix_cache_dir(settings: Settings) -> str | None:
    """Create the cache directory if missing (a safe fix). Returns what was done, or ``None``."""
    path: Path = settings.cache_dir
    if path.exists():
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"could not create cache directory {path}: {exc.strerror or exc}"
    return f"created cache directory {path}"


SAFE_FIXES: tuple[Callable[[Settings], str | None], ...] = (fix_cache_dir,)


def check_plugins(manager: PluginManager) -> Check:
    """Plugins load and their registries fill without duplicate names."""
    from dspyo3_core.plugins import REGISTRY_HOOKS

    try:
        infos = manager.plugins()
        for hook_name in REGISTRY_HOOKS:
            manager.registry(hook_name)
    except Exception as exc:
        return Check("plugins", "fail", f"{type(exc).__name__}: {exc}",
                     "uninstall or disable (DSPYO3_DISABLE_PLUGINS) the plugin named above")
    loaded = sum(info.status == "loaded" for info in infos)
    return Check("plugins", "ok", f"{loaded} plugin(s) loaded")


def run_doctor(manager: PluginManager, *, fix: bool = False, plugin_error: str | None = None) -> DoctorReport:
    """Run every check (after the safe fixes, when ``fix``). ``plugin_error``: why plugins could not load at
    all (the CLI then passes a core-only manager)."""
    fixed: list[str] = []
    try:
        settings = load_settings()
        config_check = Check("config", "ok", "config files: " + (", ".join(map(str, settings.files)) or "none"))
    except ConfigError as exc:
        settings = Settings()
        config_check = Check("config", "fail", str(exc), "fix the file or variable named above")
    if fix:
        for apply in SAFE_FIXES:
            done = apply(settings)
            if done:
                fixed.append(done)
    plugins = (Check("plugins", "fail", plugin_error, "uninstall or disable (DSPYO3_DISABLE_PLUGINS) the plugin "
                     "named above") if plugin_error else check_plugins(manager))
    checks = [check_python(), check_dspy(), plugins]
    if plugins.status == "ok" or plugin_error:
        checks += check_packages(manager)
    checks += [check_native(), config_check]
    if plugins.status == "ok":
        checks += check_lm(settings, manager)
    checks += [check_redis(settings), check_cache_dir(settings)]
    return DoctorReport(checks, fixed)
