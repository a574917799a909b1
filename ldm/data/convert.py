"""Cut CT volumes into the project's PNG slices, with the patient in every file name.

    python -m ldm.data.convert SRC --out data/CT/<class> --prefix covid [--patient ID] [--window LO HI]

SRC is a volume (NIfTI .nii/.nii.gz, Analyze 7.5 or NIfTI pair .hdr/.img, NRRD, InVesalius .inv3,
a DICOM series folder) or a folder of them. Slices are written as
`<prefix>_<patient>_<series>_slice_<NNN>.png`, the naming of the public COVID-19 & Normal CT data
(`covid_p100_ns002i00001_slice_001.png`), so that split.py keeps a patient's series together.
The patient and series come from the file name (`p100_ns002i00001.hdr` -> p100, ns002i00001;
`case7.nii.gz` -> case7, s01); `--patient` names the patient of everything in SRC instead.
Slices are HU-preserving 16-bit PNGs (HU + 1024); `--window LO HI` writes 8-bit windowed PNGs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ldm.data.intensity import Window, window_to_png8, write_png8, write_png16_hu
from ldm.data.volumes import (
    KNOWN_SUFFIXES,
    VOLUME_SUFFIXES,
    VolumeError,
    is_dicom_file,
    read_volume,
    slice_name,
    suffix_of,
    volume_stem,
)

DEFAULT_SERIES = "s01"
# a volume whose darkest voxel is above this has no air in it: probably not HU
AIR_CHECK_HU = -500.0


class ConvertError(ValueError):
    """SRC or the naming options cannot be turned into slices; the message names the culprit."""


def token(text: str) -> str:
    """A name token without underscores (underscores separate class, patient and series)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")


def series_token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).replace("_slice_", "_").strip("-_")


def volume_names(path: Path, prefix: str, patient: str | None = None) -> str:
    """`<prefix>_<patient>_<series>` for one volume (file stem or DICOM folder name)."""
    stem = volume_stem(path)
    if patient is None:
        head, _, rest = stem.partition("_")
        patient_tok, series = token(head), series_token(rest)
    else:
        patient_tok = token(patient)
        series = series_token(stem[len(patient) + 1 :] if stem.startswith(f"{patient}_") else stem)
    if not patient_tok:
        raise ConvertError(f"{path}: no patient id in the name; pass --patient")
    return f"{prefix}_{patient_tok}_{series or DEFAULT_SERIES}"


def find_volumes(src: Path) -> list[Path]:
    """Volumes under src: volume files, and each folder holding DICOM files as one series."""
    if not src.exists():
        raise ConvertError(f"{src}: no such file or folder")
    if src.is_file():
        return [src]
    found = []
    for folder, _, files in sorted(os.walk(src)):
        paths = sorted(Path(folder) / f for f in files if not f.startswith("."))
        found += [p for p in paths if suffix_of(p) in VOLUME_SUFFIXES]
        if any(suffix_of(p) not in KNOWN_SUFFIXES and is_dicom_file(p) for p in paths):
            found.append(Path(folder))
    if not found:
        raise ConvertError(f"{src}: no NIfTI, Analyze, NRRD, .inv3 or DICOM volumes found")
    return found


def write_slices(
    hu: np.ndarray, out_dir: Path, stem: str, window: Window | None = None, skip_existing: bool = False
) -> int:
    """Write every slice of a (slices, rows, cols) HU volume as `<stem>_slice_<NNN>.png`; returns how many.

    16-bit HU+1024 PNGs, or 8-bit PNGs through `window`. Each file is written atomically;
    skip_existing leaves slices already on disk alone (completing a half-finished run).
    """
    written = 0
    for index, hu_slice in enumerate(hu):
        path = out_dir / slice_name(stem, index, len(hu))
        if skip_existing and path.is_file():
            continue
        if window is None:
            write_png16_hu(path, hu_slice)
        else:
            write_png8(path, window_to_png8(hu_slice, window))
        written += 1
    return written


def convert_volume(src: Path, out_dir: Path, stem: str, window: Window | None = None) -> int:
    """Read one volume and write its slices; on any failure nothing of this volume is left in out_dir."""
    hu = read_volume(src)
    if float(hu.min()) > AIR_CHECK_HU and window is None:
        print(f"warning: {src}: no voxel below {AIR_CHECK_HU:g} HU; is this volume in HU?", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{stem}.", dir=out_dir))
    try:
        count = write_slices(hu, staging, stem, window)
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return count


def plan(src: Path, prefix: str, patient: str | None) -> list[tuple[Path, str]]:
    """(volume, stem) pairs, refusing two volumes that would write the same slice names."""
    if not prefix or token(prefix) != prefix:
        raise ConvertError(f"--prefix '{prefix}': use letters, digits and '-' only (it is the class in file names)")
    pairs = [(path, volume_names(path, prefix, patient)) for path in find_volumes(src)]
    seen: dict[str, Path] = {}
    for path, stem in pairs:
        if stem in seen:
            raise ConvertError(f"{seen[stem]} and {path} both map to {stem}_slice_*.png; convert them separately")
        seen[stem] = path
    return pairs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ldm.data.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="a volume file, a DICOM series folder, or a folder of volumes")
    parser.add_argument("--out", type=Path, required=True, help="class folder to write into, e.g. data/CT/covid")
    parser.add_argument("--prefix", required=True, help="class prefix of the file names, e.g. covid")
    parser.add_argument("--patient", help="patient id of every volume in SRC (default: from each file name)")
    parser.add_argument(
        "--window",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="write 8-bit PNGs through this HU window instead of 16-bit HU",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.window and not args.window[1] > args.window[0]:
            raise ConvertError(f"--window {args.window[0]:g} {args.window[1]:g}: expected LO < HI")
        window = tuple(args.window) if args.window else None
        pairs = plan(args.src, args.prefix, args.patient)
        for path, stem in pairs:
            count = convert_volume(path, args.out, stem, window)
            print(f"{path}: {count} slices -> {args.out / stem}_slice_*.png")
    except (ConvertError, VolumeError, ValueError, OSError) as err:
        print(f"convert: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
