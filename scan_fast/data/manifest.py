"""A part folder's or an index's manifest.json: its name, format, checksum and checks.

Imports nothing of ffcv, so that a job that only writes or reads manifests (`data index`, the
conversion's job records) starts without it.
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from .regions import DataError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "scan-fast parts"
MANIFEST_VERSION = 1


def manifest_checksum(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own checksum."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_json(path) -> Optional[object]:
    """A JSON file's content; None when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_manifest(folder) -> dict:
    """The manifest of a part folder, checked for form and checksum."""
    folder = os.fspath(folder)
    where = os.path.join(folder, MANIFEST)
    if not os.path.isfile(where):
        raise DataError(f"{folder} is a folder without {MANIFEST}: not a part folder "
                        f"(a conversion that has not finished writes it last)")
    try:
        manifest = json.loads(Path(where).read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{where} is not readable JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{where} is not a scan-fast part manifest")
    return check_manifest(where, manifest, MANIFEST_VERSION)


def check_manifest(where: str, manifest: dict, version: int) -> dict:
    """A manifest's version, checksum and sample counts (a part folder's or an index's); DataError
    naming the file `where` otherwise."""
    if manifest.get("version") != version:
        raise DataError(f"{where} has manifest version {manifest.get('version')}, expected {version}")
    if manifest.get("checksum") != manifest_checksum(manifest):
        raise DataError(f"{where} fails its checksum: it was edited or damaged")
    parts = manifest.get("parts") or []
    if not parts:
        raise DataError(f"{where} lists no parts")
    total = sum(int(p["num_samples"]) for p in parts)
    if total != int(manifest["num_samples"]):
        raise DataError(f"{where} lists parts of {total} samples in all but says {manifest['num_samples']}")
    return manifest


def check_listed_file(path: str, recorded_bytes, what: str, manifest_path: str, says: str, because: str) -> None:
    """DataError unless the file a manifest lists is there with the size it recorded: `what` names the
    file, `says` who recorded the size, `because` what a changed size means."""
    try:
        size = os.path.getsize(path)
    except OSError:
        raise DataError(f"{what} listed in {manifest_path} is missing") from None
    if size != int(recorded_bytes):
        raise DataError(f"{what} has {size} bytes, {says} {recorded_bytes}: {because}")
