"""A checksummed cache of the offline demo's assets (data, judge, policy model), built at first use.

Each asset lives in ``<root>/<name>/`` with a ``manifest.json`` that records the build parameters
and the sha256 and size of every file. ``AssetCache.get`` reuses a folder only when its manifest
parses, its parameters equal the requested ones and every file is present with the recorded
checksum; anything else (a missing or corrupt file, a half-written manifest, other parameters) is
logged and rebuilt. A build writes into a temporary folder beside the target and is renamed into
place only when complete, so an interrupted build never leaves a folder that looks valid.

    cache = AssetCache("~/.cache/verl_variance/assets")
    asset = cache.get("imdb_reviews", {"seed": 0}, build=write_reviews, bytes_needed=80_000_000)
    asset.path / "reviews.parquet"
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verl_variance.extras import EXTRAS, MissingExtra, install_command, require_extra

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "verl_variance.asset/1"
ASSETS_DIR_ENV = "VERL_VARIANCE_ASSETS"
DEMO_EXTRA_INSTALL = install_command("demo")
DEMO_MODULES = EXTRAS["demo"]
"""Importable module -> PyPI distribution, for every package of the ``demo`` extra."""

NOT_BUILT = "not built yet"

BuildFn = Callable[[Path], Mapping[str, Any] | None]
"""Writes an asset's files into the given (empty) folder; may return extra facts for the manifest."""


MissingDemoExtra = MissingExtra
"""A package of the ``demo`` extra is not installed."""


class InsufficientDiskSpace(OSError):
    """The assets folder's file system has too little free space for a build."""


class AssetFetchError(RuntimeError):
    """An asset's source could not be obtained (no network, package index unreachable)."""


def default_assets_dir() -> Path:
    """``$VERL_VARIANCE_ASSETS`` if set, else ``~/.cache/verl_variance/assets``."""
    return Path(os.environ.get(ASSETS_DIR_ENV) or Path.home() / ".cache" / "verl_variance" / "assets").expanduser()


def require_demo_extra(*modules: str) -> None:
    """Raise ``MissingDemoExtra`` naming the install command if any of ``modules`` (keys of ``DEMO_MODULES``;
    default: all of them) cannot be imported."""
    require_extra("demo", "the IMDB demo", *modules)


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _size(n_bytes: float) -> str:
    """Human-readable size (decimal units)."""
    if n_bytes < 1000:
        return f"{n_bytes:.0f} B"
    for unit in ("KB", "MB"):
        n_bytes /= 1000
        if n_bytes < 1000:
            return f"{n_bytes:.1f} {unit}"
    return f"{n_bytes / 1000:.1f} GB"


def check_free_space(folder: str | os.PathLike, bytes_needed: int, what: str = "the asset") -> None:
    """Raise ``InsufficientDiskSpace`` unless ``folder``'s file system has ``bytes_needed`` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < bytes_needed:
        raise InsufficientDiskSpace(
            f"not enough free disk space to build {what} in {folder}: it needs about {_size(bytes_needed)} "
            f"({bytes_needed:,} bytes) and only {_size(free)} ({free:,} bytes) are free. Free some space there, or "
            f"put the assets on another disk with --assets-dir DIR (or the {ASSETS_DIR_ENV} environment variable)"
        )


def _jsonable(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(params), sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"asset {name!r}: build parameters must be JSON values (str, numbers, lists, dicts): {exc}"
        ) from exc


@dataclass(frozen=True)
class Asset:
    """A verified asset folder."""

    name: str
    path: Path
    manifest: dict[str, Any]
    rebuilt: bool

    @property
    def info(self) -> dict[str, Any]:
        """What the builder reported (metrics, timings), from the manifest."""
        return self.manifest.get("info", {})

    def sha256(self, relative_path: str) -> str:
        """The recorded checksum of one of the asset's files."""
        return self.manifest["files"][relative_path]["sha256"]


class AssetCache:
    """Assets under one root folder, each built at first use and verified by checksum at every use.

    Args:
        root: the assets folder (created if missing); default ``default_assets_dir()``.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_assets_dir()

    def path(self, name: str) -> Path:
        """Where asset ``name`` lives (whether or not it is built)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"asset name {name!r}: use a plain folder name (no '/', not starting with '.')")
        return self.root / name

    def problem(self, name: str, params: Mapping[str, Any]) -> str | None:
        """Why asset ``name`` cannot be reused with ``params`` (None: it can). Verifies every checksum."""
        return self._inspect(name, _jsonable(params, name))[0]

    def load(self, name: str, params: Mapping[str, Any]) -> Asset:
        """The asset if it is built with ``params`` and verifies; else ``FileNotFoundError`` saying why."""
        reason, manifest = self._inspect(name, _jsonable(params, name))
        if manifest is None:
            raise FileNotFoundError(f"asset {name!r} in {self.path(name)} is not usable: {reason}")
        return Asset(name, self.path(name), manifest, rebuilt=False)

    def get(self, name: str, params: Mapping[str, Any], build: BuildFn, bytes_needed: int) -> Asset:
        """Return asset ``name`` built with ``params``, building (or rebuilding) it first if needed.

        Args:
            name: folder name under the root.
            params: everything the asset's content depends on (JSON values); a change rebuilds.
            build: writes the files into the empty folder it is given; what it returns goes to the
                manifest's ``info``.
            bytes_needed: free space to require before building (the asset plus build scratch).
        """
        params = _jsonable(params, name)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(name):
            reason, manifest = self._inspect(name, params)
            if manifest is not None:
                logger.debug("asset %s: reusing %s", name, self.path(name))
                return Asset(name, self.path(name), manifest, rebuilt=False)
            if reason == NOT_BUILT:
                logger.info("asset %s: building in %s", name, self.path(name))
            else:
                logger.warning("asset %s in %s is not usable (%s): rebuilding it", name, self.path(name), reason)
            manifest = self._build(name, params, build, bytes_needed)
        return Asset(name, self.path(name), manifest, rebuilt=True)

    def _inspect(self, name: str, params: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
        """(None, manifest) if the folder verifies against ``params``, else (the reason, None)."""
        folder = self.path(name)
        manifest_path = folder / MANIFEST_FILE
        if not folder.is_dir():
            return NOT_BUILT, None
        if not manifest_path.is_file():
            return f"{MANIFEST_FILE} is missing (an interrupted build?)", None
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format") != MANIFEST_FORMAT:
                return f"{MANIFEST_FILE} has format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}", None
            recorded = dict(manifest["params"])
            files = {str(k): (str(v["sha256"]), int(v["bytes"])) for k, v in manifest["files"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return f"{MANIFEST_FILE} is unreadable ({type(exc).__name__}: {exc})", None
        if recorded != params:
            changed = sorted(k for k in set(recorded) | set(params) if recorded.get(k) != params.get(k))
            return f"built with other parameters ({', '.join(changed)} changed)", None
        for relative, (sha256, n_bytes) in files.items():
            file = folder / relative
            if not file.is_file():
                return f"{relative} is missing", None
            if file.stat().st_size != n_bytes:
                return f"{relative} has {file.stat().st_size} bytes, the manifest says {n_bytes}", None
            if sha256_file(file) != sha256:
                return f"{relative} does not match its sha256 checksum (corrupt)", None
        return None, manifest

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        """Serialize builds of one asset across processes (an exclusive lock on ``.<name>.lock``)."""
        with open(self.root / f".{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _build(self, name: str, params: dict[str, Any], build: BuildFn, bytes_needed: int) -> dict[str, Any]:
        for stale in self.root.glob(f".{name}.build-*"):  # left by a crashed build (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        check_free_space(self.root, bytes_needed, what=f"the {name!r} asset")
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=self.root))
        started = time.perf_counter()
        try:
            info = build(scratch)
            files = {
                file.relative_to(scratch).as_posix(): {"sha256": sha256_file(file), "bytes": file.stat().st_size}
                for file in sorted(scratch.rglob("*"))
                if file.is_file() and file.name != MANIFEST_FILE
            }
            if not files:
                raise RuntimeError(f"asset {name!r}: the builder wrote no files")
            manifest = {
                "format": MANIFEST_FORMAT,
                "name": name,
                "params": params,
                "files": files,
                "info": dict(info or {}),
                "build_seconds": round(time.perf_counter() - started, 2),
            }
            (scratch / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            target = self.path(name)
            if target.exists():
                retired = Path(tempfile.mkdtemp(prefix=f".{name}.build-old-", dir=self.root))
                os.replace(target, retired / name)
                os.replace(scratch, target)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(scratch, target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        size = sum(entry["bytes"] for entry in files.values())
        logger.info("asset %s: built in %.1f s, %s in %s", name, manifest["build_seconds"], _size(size), target)
        return manifest
