"""Sample CT from package registries, for the demo and for smoke runs without a data agreement.

    python -m ldm.data.sample [--out data/CT] [--cache data/downloads] [--no-head]

- chest: two patients (lung1: 48 slices, lung2: 61 slices; 512 x 512, HU) from the test data of
  pyradiomics, shipped in the `pyradiomics-bhklab==3.1.4` source archive on PyPI (BSD-3-Clause);
  fetched with `pip download`.
- head: one patient (108 slices, 256 x 256, HU), InVesalius's Cranium.inv3 in the Debian package
  `invesalius-examples` (GPL-2); fetched with `apt-get download` where apt-get exists, otherwise
  skipped with a one-line reason.

Archives are pinned by sha256 and kept in the cache; slices go to `<out>/<class>/` as
`<class>_<patient>_s01_slice_<NNN>.png` (16-bit, HU + 1024). A re-run that finds every slice
does nothing; a half-finished run is completed.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldm.data.convert import write_slices
from ldm.data.volumes import VolumeError, parse_inv3, parse_nrrd, slice_name
from ldm.util import file_sha256

PYRADIOMICS_SPEC = "pyradiomics-bhklab==3.1.4"
PYRADIOMICS_ARCHIVE = "pyradiomics_bhklab-3.1.4.tar.gz"
PYRADIOMICS_SHA256 = "a44a087efc4ede91b5dfa5cf0de58ea3596bfaec1ef2484f278504b0a8fd5ffb"
INVESALIUS_PACKAGE = "invesalius-examples=3.1.99998-4"
INVESALIUS_DEB = "invesalius-examples_3.1.99998-4_all.deb"
INVESALIUS_SHA256 = "f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97"
CRANIUM_MEMBER = "usr/share/doc/invesalius-examples/examples/Cranium.inv3"
DOWNLOAD_TIMEOUT_S = 600


class SampleError(RuntimeError):
    """The sample cannot be fetched or read; one line that says why."""


@dataclass(frozen=True)
class Archive:
    """A registry file pinned by sha256; `download(folder)` must leave `filename` in folder."""

    filename: str
    sha256: str
    download: Callable[[Path], None]

    def fetch(self, cache: Path) -> Path:
        """The verified archive in cache, downloaded first if absent or not the pinned file."""
        path = cache / self.filename
        if path.is_file() and file_sha256(path) == self.sha256:
            return path
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
            self.download(Path(tmp))
            got = Path(tmp) / self.filename
            if not got.is_file():
                raise SampleError(f"{self.filename}: the download did not produce this file")
            digest = file_sha256(got)
            if digest != self.sha256:
                raise SampleError(f"{self.filename}: sha256 {digest} is not the pinned {self.sha256}")
            os.replace(got, path)
        return path


@dataclass(frozen=True)
class SamplePatient:
    """One sample patient: where its volume comes from and the slices it gives."""

    cls: str
    patient: str
    n_slices: int
    archive: Archive
    read: Callable[[Path], np.ndarray]  # archive path -> (slices, rows, cols) HU
    optional: bool = False  # skipped with a reason when its archive cannot be had
    series: str = "s01"

    @property
    def patient_id(self) -> str:
        return f"{self.cls}_{self.patient}"

    @property
    def stem(self) -> str:
        return f"{self.cls}_{self.patient}_{self.series}"

    def slice_paths(self, out: Path) -> list[Path]:
        return [out / self.cls / slice_name(self.stem, i, self.n_slices) for i in range(self.n_slices)]


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    """Run a registry client; failure -> SampleError with the client's last error line."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except FileNotFoundError as err:
        raise SampleError(f"{what}: {cmd[0]} not found") from err
    except subprocess.TimeoutExpired as err:
        raise SampleError(f"{what}: {cmd[0]} timed out after {DOWNLOAD_TIMEOUT_S} s") from err
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("ERROR", "E:"))] or lines or ["no output"]
        raise SampleError(f"{what} failed (offline, or no access to the registry?): {errors[-1]}")


def pip_download(spec: str, folder: Path) -> None:
    # only the named package is built from source; its build requirements may come as wheels
    name = spec.split("==")[0]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        name,
        "--disable-pip-version-check",
        "--retries",
        "2",
        "--timeout",
        "30",
        "-q",
        "-d",
        str(folder.resolve()),  # pip runs with cwd=folder: a relative -d would nest
        spec,
    ]
    _run(cmd, folder, f"pip download {spec}")


def apt_download(package: str, folder: Path) -> None:
    """`apt-get download`; when that fails and we are root, refresh the package lists once and retry."""
    if shutil.which("apt-get") is None:
        raise SampleError("apt-get not found (not a Debian/Ubuntu system)")
    try:
        _run(["apt-get", "download", package], folder, f"apt-get download {package}")
    except SampleError:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise
        _run(["apt-get", "update", "-qq"], folder, "apt-get update")
        _run(["apt-get", "download", package], folder, f"apt-get download {package}")


def _read_member(archive: Path, member: str) -> bytes:
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            fh = tar.extractfile(member)
            if fh is None:
                raise SampleError(f"{archive}: {member} is not a file")
            return fh.read()
    except KeyError as err:
        raise SampleError(f"{archive}: no member {member}") from err
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SampleError(f"{archive}: unreadable archive ({err})") from err


def nrrd_from_tar(member: str, archive: Path) -> np.ndarray:
    return parse_nrrd(_read_member(archive, member), f"{archive}:{member}")


def ar_member(archive: Path, prefix: str) -> bytes:
    """The first member of a Unix ar archive (a .deb) whose name starts with prefix."""
    with open(archive, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise SampleError(f"{archive}: not an ar archive (.deb)")
        while header := fh.read(60):
            if len(header) < 60:
                break
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            body = fh.read(size)
            if name.startswith(prefix):
                return body
            fh.read(size % 2)  # members are 2-byte aligned
    raise SampleError(f"{archive}: no {prefix}* member")


def inv3_from_deb(member: str, deb: Path) -> np.ndarray:
    data = ar_member(deb, "data.tar")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            names = {m.name.lstrip("./"): m for m in tar.getmembers()}
            if member not in names:
                raise SampleError(f"{deb}: no {member}")
            raw = tar.extractfile(names[member]).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SampleError(f"{deb}: unreadable data archive ({err})") from err
    return parse_inv3(raw, f"{deb}:{member}")


PYRADIOMICS = Archive(PYRADIOMICS_ARCHIVE, PYRADIOMICS_SHA256, functools.partial(pip_download, PYRADIOMICS_SPEC))
INVESALIUS = Archive(INVESALIUS_DEB, INVESALIUS_SHA256, functools.partial(apt_download, INVESALIUS_PACKAGE))
SAMPLE_PATIENTS = (
    SamplePatient(
        "chest",
        "lung1",
        48,
        PYRADIOMICS,
        functools.partial(nrrd_from_tar, "pyradiomics_bhklab-3.1.4/data/lung1_image.nrrd"),
    ),
    SamplePatient(
        "chest",
        "lung2",
        61,
        PYRADIOMICS,
        functools.partial(nrrd_from_tar, "pyradiomics_bhklab-3.1.4/data/lung2_image.nrrd"),
    ),
    SamplePatient("head", "cranium", 108, INVESALIUS, functools.partial(inv3_from_deb, CRANIUM_MEMBER), optional=True),
)


def _write_patient(patient: SamplePatient, out: Path, cache: Path) -> int:
    archive = patient.archive.fetch(cache)
    try:
        hu = patient.read(archive)
    except VolumeError as err:
        raise SampleError(str(err)) from err
    if len(hu) != patient.n_slices:
        raise SampleError(f"{archive}: {patient.patient_id} has {len(hu)} slices, expected {patient.n_slices}")
    return write_slices(hu, out / patient.cls, patient.stem, skip_existing=True)


def prepare_sample(
    out: Path = Path("data/CT"),
    cache: Path = Path("data/downloads"),
    include_head: bool = True,
    patients: Sequence[SamplePatient] = SAMPLE_PATIENTS,
    log: Callable[[str], None] = print,
) -> dict:
    """Fetch and write the sample CT; returns {"slices": {patient id: slices on disk},
    "written": slices written by this call, "skipped": {patient id: reason}}.

    Raises SampleError when a required archive cannot be fetched or read.
    """
    out, cache = Path(out), Path(cache)
    wanted = [p for p in patients if include_head or p.cls != "head"]
    report: dict = {"slices": {}, "written": 0, "skipped": {}}
    missing = [p for p in wanted if not all(path.is_file() for path in p.slice_paths(out))]
    for patient in wanted:
        if patient not in missing:
            report["slices"][patient.patient_id] = patient.n_slices
            continue
        try:
            written = _write_patient(patient, out, cache)
        except SampleError as err:
            if not patient.optional:
                raise
            report["skipped"][patient.patient_id] = str(err)
            log(f"{patient.patient_id}: skipped, {err}")
            continue
        report["slices"][patient.patient_id] = patient.n_slices
        report["written"] += written
        log(f"{patient.patient_id}: wrote {written} slices to {out / patient.cls}")
    total = sum(report["slices"].values())
    if not missing:
        log(f"sample CT complete: {total} slices of {len(wanted)} patients in {out}; nothing to do")
    else:
        log(f"sample CT: {total} slices of {len(report['slices'])} patients in {out} (wrote {report['written']})")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ldm.data.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/CT"), help="slice root (class folders below)")
    parser.add_argument("--cache", type=Path, default=Path("data/downloads"), help="where archives are kept")
    parser.add_argument(
        "--no-head", dest="include_head", action="store_false", help="chest patients only (skip the apt-get download)"
    )
    args = parser.parse_args(argv)
    try:
        prepare_sample(args.out, args.cache, args.include_head)
    except (SampleError, OSError) as err:
        print(f"sample: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
