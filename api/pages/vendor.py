"""The browser assets of the pages we serve, taken from the npm registry at build time.

Swagger UI and GraphiQL are served from the service itself (api/pages), never from a CDN:
their built files come from the official npm packages, at the versions pinned in
`vendor.lock.json` beside this file, and land in `static/vendor/<package>@<version>/`. Each
package's tarball must match the lock's `integrity` (npm's own sha512), and each file taken
from it the lock's `sha384` (the same value the pages put in `integrity="..."`), or nothing is
written. The build (setup.py's build_py: `pip install`, `pip wheel`, the container image) calls
`ensure()`; it downloads only what is missing or different, so a second build is offline.

This module runs inside the build before the project's dependencies exist: standard library only,
and no import of the `api` package.

```sh
python api/pages/vendor.py            # fetch what is missing (what the build does)
python api/pages/vendor.py --check    # exit 1 unless every file is present and matches the lock
python api/pages/vendor.py --pin      # after editing versions in the lock: re-read integrity and hashes
```

The registry is https://registry.npmjs.org unless `WFO_NPM_REGISTRY` or npm's own
`npm_config_registry` names a mirror.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCK = HERE / "vendor.lock.json"
VENDOR_DIR = HERE / "static" / "vendor"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
#: Files are read from this folder of an npm tarball.
TARBALL_ROOT = "package/"
DOWNLOAD_TIMEOUT_SECONDS = 60
#: The biggest tarball we accept (graphiql's is 3.7 MB).
MAX_TARBALL_BYTES = 64 * 1024 * 1024


class VendorError(Exception):
    """A pinned asset cannot be fetched or does not match the lock."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # npm's dist.integrity of the tarball: "sha512-<base64>"
    files: dict[str, str]  # path inside the package -> "sha384-<base64>"

    @property
    def folder(self) -> str:
        """Where its files are served from, below static/vendor/: "react-dom@18.2.0"."""
        return f"{self.name.replace('/', '__')}@{self.version}"


def sri(algorithm: str, data: bytes) -> str:
    """A Subresource Integrity value: "sha384-<base64 digest>"."""
    return f"{algorithm}-{base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def matches(integrity: str, data: bytes) -> bool:
    algorithm, _, _ = integrity.partition("-")
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise VendorError(f"unsupported integrity algorithm in {integrity!r}")
    return sri(algorithm, data) == integrity


def load_lock(path: Path = LOCK) -> list[Package]:
    document = json.loads(path.read_text())
    return [
        Package(name=p["name"], version=p["version"], integrity=p["integrity"], files=dict(p["files"]))
        for p in document["packages"]
    ]


def registry_url() -> str:
    registry = os.environ.get("WFO_NPM_REGISTRY") or os.environ.get("npm_config_registry") or DEFAULT_REGISTRY
    return registry.rstrip("/")


def tarball_url(package: Package, registry: str) -> str:
    """npm's tarball address: <registry>/@scope/name/-/name-1.0.0.tgz."""
    basename = package.name.rsplit("/", 1)[-1]
    return f"{registry}/{package.name}/-/{basename}-{package.version}.tgz"


def _download(url: str) -> bytes:
    if urllib.parse.urlsplit(url).scheme not in ("https", "http", "file"):
        raise VendorError(f"refusing to download {url!r}: not an http(s) or file URL")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
            data: bytes = response.read(MAX_TARBALL_BYTES + 1)
    except OSError as exc:
        raise VendorError(f"cannot download {url}: {exc}") from exc
    if len(data) > MAX_TARBALL_BYTES:
        raise VendorError(f"{url} is larger than {MAX_TARBALL_BYTES} bytes")
    return data


def extract(package: Package, tarball: bytes) -> dict[str, bytes]:
    """The package's pinned files from its tarball, each checked against the lock."""
    if not matches(package.integrity, tarball):
        raise VendorError(
            f"{package.name}@{package.version}: the tarball does not match the lock's integrity {package.integrity}"
        )
    found = _files_of(package, tarball)
    for path, data in found.items():
        if not matches(package.files[path], data):
            raise VendorError(
                f"{package.name}@{package.version}: {path} does not match the lock's {package.files[path]}"
            )
    return found


def _files_of(package: Package, tarball: bytes) -> dict[str, bytes]:
    """The package's pinned files, as its tarball holds them (under package/); all or an error."""
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for member in archive.getmembers():
            path = member.name.removeprefix(TARBALL_ROOT)
            if member.isfile() and path in package.files:
                reader = archive.extractfile(member)
                if reader is not None:
                    found[path] = reader.read()
    missing = sorted(set(package.files) - set(found))
    if missing:
        raise VendorError(f"{package.name}@{package.version} has no {', '.join(missing)}")
    return found


def present(package: Package, vendor_dir: Path = VENDOR_DIR) -> bool:
    """Whether every pinned file of the package is on disk and matches the lock."""
    folder = vendor_dir / package.folder
    for path, integrity in package.files.items():
        file = folder / path
        if not file.is_file() or not matches(integrity, file.read_bytes()):
            return False
    return True


def _write(folder: Path, files: dict[str, bytes]) -> None:
    """All files or none: written into a temporary folder, then renamed into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for path, data in files.items():
            target = staging / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def ensure(
    vendor_dir: Path = VENDOR_DIR, lock: Path = LOCK, registry: str | None = None, log: bool = True
) -> list[Package]:
    """Fetch every package that is missing or differs from the lock; the ones fetched."""
    registry = registry or registry_url()
    fetched = []
    for package in load_lock(lock):
        if present(package, vendor_dir):
            continue
        url = tarball_url(package, registry)
        if log:
            print(f"vendor: {package.name}@{package.version} from {url}", file=sys.stderr)
        _write(vendor_dir / package.folder, extract(package, _download(url)))
        fetched.append(package)
    return fetched


def pin(lock: Path = LOCK, registry: str | None = None) -> None:
    """Re-read each package's integrity from the registry and hash its files again (after a version bump)."""
    registry = registry or registry_url()
    document = json.loads(lock.read_text())
    for entry in document["packages"]:
        meta = json.loads(_download(f"{registry}/{entry['name']}/{entry['version']}"))
        entry["integrity"] = meta["dist"]["integrity"]
        package = Package(entry["name"], entry["version"], entry["integrity"], dict(entry["files"]))
        files = _files_of(package, _download(meta["dist"]["tarball"]))
        entry["files"] = {path: sri("sha384", files[path]) for path in package.files}
    lock.write_text(json.dumps(document, indent=2) + "\n")


def main(argv: list[str]) -> int:
    try:
        if "--pin" in argv:
            pin()
        elif "--check" in argv:
            stale = [f"{p.name}@{p.version}" for p in load_lock() if not present(p)]
            if stale:
                print(f"vendor: missing or different: {', '.join(stale)}", file=sys.stderr)
                return 1
        else:
            ensure()
    except VendorError as exc:
        print(f"vendor: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
