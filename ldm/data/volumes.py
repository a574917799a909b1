"""CT volume readers -> float32 HU arrays of shape (slices, rows, cols), each slice as a viewer shows it.

Viewer orientation (radiological, the DICOM/PACS habit): the patient's anterior at the top,
the patient's right on the image's left, slices from inferior to superior. Every reader
brings its file's voxel axes there through `to_viewer` from the direction vectors the file
declares, so the slices of one patient look the same whatever format they came in.

NRRD and InVesalius .inv3 are simple enough to read by hand (the sample CT comes in them);
NIfTI/Analyze and DICOM go through the field's own readers, nibabel and pydicom, imported
only when such a file is read.
"""

from __future__ import annotations

import bz2
import gzip
import importlib
import io
import os
import plistlib
import re
import tarfile
from pathlib import Path
from types import ModuleType

import numpy as np

# voxel-axis directions are given in LPS world coordinates (+x patient left, +y posterior, +z superior)
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
NIBABEL_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
INV3_SUFFIXES = (".inv3",)
DICOM_SUFFIXES = (".dcm",)

_NRRD_TYPES = {
    np.dtype("i1"): ("signed char", "int8", "int8_t"),
    np.dtype("u1"): ("uchar", "unsigned char", "uint8", "uint8_t"),
    np.dtype("i2"): ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    np.dtype("u2"): ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    np.dtype("i4"): ("int", "signed int", "int32", "int32_t"),
    np.dtype("u4"): ("uint", "unsigned int", "uint32", "uint32_t"),
    np.dtype("i8"): ("longlong", "long long", "long long int", "signed long long", "int64", "int64_t"),
    np.dtype("u8"): ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    np.dtype("f4"): ("float",),
    np.dtype("f8"): ("double",),
}
NRRD_DTYPES = {name: dtype for dtype, names in _NRRD_TYPES.items() for name in names}
# NRRD `space` values whose axes we can map to LPS (sign flips per world axis)
NRRD_SPACES = {
    "left-posterior-superior": (1, 1, 1),
    "lps": (1, 1, 1),
    "right-anterior-superior": (-1, -1, 1),
    "ras": (-1, -1, 1),
    "left-anterior-superior": (1, -1, 1),
    "las": (1, -1, 1),
}


class VolumeError(ValueError):
    """A volume cannot be read as 3-D CT; the message starts with the file or folder."""


def suffix_of(path: Path) -> str:
    """Lower-case suffix, with .nii.gz kept whole."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def to_viewer(data: np.ndarray, directions: np.ndarray, name: str | os.PathLike[str] = "volume") -> np.ndarray:
    """Voxel array indexed (i, j, k) -> (slices, rows, cols) in viewer orientation.

    directions[a] is the LPS world vector of voxel axis a. Each voxel axis is matched to the
    world axis it runs closest to and flipped where it runs backwards, so an oblique or
    sagittally stored volume still comes out as axial slices (no resampling: the nearest
    axis-aligned reading).
    """
    directions = np.asarray(directions, dtype=np.float64)
    world_axis = np.abs(directions).argmax(axis=1)
    if sorted(world_axis.tolist()) != [0, 1, 2]:
        raise VolumeError(f"{name}: voxel axes do not map to distinct patient axes (directions {directions.tolist()})")
    for axis in range(3):
        if directions[axis, world_axis[axis]] < 0:
            data = np.flip(data, axis)
    # slices along S (world z), rows along P (world y), cols along L (world x)
    order = [int(np.flatnonzero(world_axis == w)[0]) for w in (2, 1, 0)]
    return np.ascontiguousarray(data.transpose(order), dtype=np.float32)


def _as_3d(data: np.ndarray, name: str | os.PathLike[str]) -> np.ndarray:
    """Drop trailing singleton axes (a 4-D file with one time point is a volume); refuse anything else."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{name}: expected 3-D data, got shape {tuple(data.shape)}")
    return data


# ---- NRRD ---------------------------------------------------------------------------------------


def _nrrd_header(raw: bytes, name: str) -> tuple[dict[str, str], int]:
    """Fields (lower-case keys) and the offset where the data starts."""
    if not raw.startswith(b"NRRD000"):
        raise VolumeError(f"{name}: not an NRRD file (no NRRD000x magic)")
    fields: dict[str, str] = {}
    offset = raw.index(b"\n") + 1
    while True:
        end = raw.find(b"\n", offset)
        if end < 0:
            end = len(raw)
        line = raw[offset:end].decode("latin-1").rstrip("\r")
        offset = end + 1
        if not line:
            return fields, min(offset, len(raw))
        if line.startswith("#") or ":=" in line:
            continue  # comments and key/value pairs carry no geometry or intensity
        key, sep, value = line.partition(": ")
        if not sep:
            raise VolumeError(f"{name}: malformed NRRD header line '{line}'")
        fields[key.strip().lower()] = value.strip()
        if end == len(raw):
            return fields, len(raw)


def _nrrd_directions(fields: dict[str, str], name: str) -> np.ndarray:
    """LPS direction of each voxel axis; identity when the file declares no usable space."""
    space = fields.get("space", "").lower()
    if "space directions" not in fields or space not in NRRD_SPACES:
        return np.eye(3)
    vectors = re.findall(r"\(([^)]*)\)", fields["space directions"])
    if len(vectors) != 3:
        raise VolumeError(f"{name}: expected 3 space directions, got '{fields['space directions']}'")
    directions = np.array([[float(v) for v in vec.split(",")] for vec in vectors])
    return directions * np.array(NRRD_SPACES[space], dtype=np.float64)


def parse_nrrd(raw: bytes, name: str | os.PathLike[str], folder: Path | None = None) -> np.ndarray:
    """NRRD bytes -> (slices, rows, cols) float32; `folder` resolves a detached header's data file."""
    fields, offset = _nrrd_header(raw, str(name))
    if int(fields.get("dimension", "0")) != 3:
        raise VolumeError(f"{name}: expected 3-D data, got dimension {fields.get('dimension')}")
    dtype = NRRD_DTYPES.get(fields.get("type", "").lower())
    if dtype is None:
        raise VolumeError(f"{name}: unsupported NRRD type '{fields.get('type')}'")
    if fields.get("endian", "little").lower() == "big":
        dtype = dtype.newbyteorder(">")
    else:
        dtype = dtype.newbyteorder("<")
    if any(int(fields.get(key, "0")) != 0 for key in ("line skip", "byte skip")):
        raise VolumeError(f"{name}: NRRD line/byte skip is not supported")
    sizes = [int(v) for v in fields.get("sizes", "").split()]
    if len(sizes) != 3:
        raise VolumeError(f"{name}: expected 3 sizes, got '{fields.get('sizes')}'")
    data_file = fields.get("data file") or fields.get("datafile")
    if data_file:
        if folder is None:
            raise VolumeError(f"{name}: detached NRRD data file '{data_file}' cannot be resolved")
        try:
            body = (folder / data_file).read_bytes()
        except OSError as err:
            raise VolumeError(f"{name}: cannot read data file '{data_file}' ({err.strerror})") from err
    else:
        body = raw[offset:]
    encoding = fields.get("encoding", "raw").lower()
    decompress = {"gzip": gzip.decompress, "gz": gzip.decompress, "bzip2": bz2.decompress, "bz2": bz2.decompress}
    if encoding not in decompress and encoding != "raw":
        raise VolumeError(f"{name}: unsupported NRRD encoding '{encoding}'")
    try:
        body = decompress[encoding](body) if encoding in decompress else body
    except (OSError, EOFError, ValueError) as err:
        raise VolumeError(f"{name}: corrupt {encoding} data ({err})") from err
    expected = int(np.prod(sizes)) * dtype.itemsize
    if len(body) < expected:
        raise VolumeError(f"{name}: truncated data ({len(body)} of {expected} bytes)")
    # the first size varies fastest, so C order reads it as (k, j, i); .T gives (i, j, k)
    data = np.frombuffer(body[:expected], dtype=dtype).reshape(sizes[::-1]).T
    return to_viewer(data, _nrrd_directions(fields, str(name)), name)


def read_nrrd(path: str | os.PathLike[str]) -> np.ndarray:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise VolumeError(f"{path}: cannot read ({err.strerror})") from err
    return parse_nrrd(raw, path, folder=path.parent)


# ---- InVesalius project (.inv3) ----------------------------------------------------------------


def parse_inv3(raw: bytes, name: str | os.PathLike[str]) -> np.ndarray:
    """An InVesalius 3 project (tar.gz: main.plist + raw matrix) -> (slices, rows, cols) float32 HU."""
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            if "main.plist" not in members:
                raise VolumeError(f"{name}: no main.plist in the InVesalius project")
            main = plistlib.loads(tar.extractfile(members["main.plist"]).read())
            matrix = main.get("matrix", {})
            shape = tuple(int(v) for v in matrix.get("shape", ()))
            member = members.get(str(matrix.get("filename", "matrix.dat")))
            if len(shape) != 3 or member is None:
                raise VolumeError(f"{name}: main.plist names no 3-D matrix file")
            body = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, plistlib.InvalidFileException) as err:
        raise VolumeError(f"{name}: not a readable InVesalius project ({err})") from err
    dtype = np.dtype(str(matrix.get("dtype", "int16"))).newbyteorder("<")
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(body) != expected:
        raise VolumeError(f"{name}: matrix holds {len(body)} bytes, shape {shape} needs {expected}")
    # InVesalius keeps axial slices bottom-up (VTK's image origin), so rows are flipped back here
    return np.ascontiguousarray(np.frombuffer(body, dtype=dtype).reshape(shape)[:, ::-1, :], dtype=np.float32)


def read_inv3(path: str | os.PathLike[str]) -> np.ndarray:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise VolumeError(f"{path}: cannot read ({err.strerror})") from err
    return parse_inv3(raw, path)


# ---- NIfTI / Analyze 7.5 (nibabel) -------------------------------------------------------------


def _require(module: str, path: Path, kind: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise VolumeError(f"{path}: reading {kind} needs {module} (pip install {module})") from err


def read_nibabel(path: str | os.PathLike[str]) -> np.ndarray:
    """NIfTI (.nii, .nii.gz) or an Analyze 7.5 / NIfTI pair (.hdr + .img), scaled by the header's slope."""
    path = Path(path)
    nib = _require("nibabel", path, "NIfTI/Analyze")
    try:
        img = nib.load(str(path))
        data = _as_3d(np.asarray(img.get_fdata(dtype=np.float32)), path)
    except VolumeError:
        raise
    except Exception as err:  # nibabel raises many types (ImageFileError, OSError, EOFError, ValueError)
        raise VolumeError(f"{path}: cannot read as NIfTI/Analyze ({type(err).__name__}: {err})") from err
    # affine columns are the RAS directions of voxel axes i, j, k
    directions = (LPS_FROM_RAS @ np.asarray(img.affine, dtype=np.float64)[:3, :3]).T
    return to_viewer(data, directions, path)


# ---- DICOM series (pydicom) --------------------------------------------------------------------


def is_dicom_file(path: Path) -> bool:
    """A .dcm file, or any file with the DICM preamble (many series come without suffixes)."""
    if suffix_of(path) in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _slice_hu(ds: object, path: Path) -> np.ndarray:
    try:
        pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as err:  # pydicom: missing handlers for compressed syntaxes, malformed pixel data...
        raise VolumeError(f"{path}: cannot decode DICOM pixel data ({type(err).__name__}: {err})") from err
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return pixels * slope + intercept


def read_dicom_series(files: list[Path], name: str | os.PathLike[str]) -> np.ndarray:
    """One DICOM series (a folder's .dcm files) -> (slices, rows, cols) float32 HU.

    Slices are ordered along the slice normal by ImagePositionPatient, else by InstanceNumber;
    RescaleSlope/Intercept give HU.
    """
    if not files:
        raise VolumeError(f"{name}: no DICOM files")
    pydicom = _require("pydicom", Path(name), "DICOM")
    datasets = []
    for path in sorted(files):
        try:
            ds = pydicom.dcmread(str(path))
        except Exception as err:  # InvalidDicomError, OSError, truncated files
            raise VolumeError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from err
        if "PixelData" not in ds:
            raise VolumeError(f"{path}: DICOM file has no pixel data (not an image slice)")
        datasets.append((path, ds))
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for _, ds in datasets}
    if len(series) > 1:
        raise VolumeError(f"{name}: holds {len(series)} DICOM series; put each series in its own folder")
    slices = [_slice_hu(ds, path) for path, ds in datasets]
    if len(slices) == 1 and slices[0].ndim == 3:
        return slices[0]  # one multi-frame file: frames are already in order
    orientation = [getattr(ds, "ImageOrientationPatient", None) for _, ds in datasets]
    positions = [getattr(ds, "ImagePositionPatient", None) for _, ds in datasets]
    geometric = all(o is not None and len(o) == 6 for o in orientation) and all(
        p is not None and len(p) == 3 for p in positions
    )
    if geometric:
        row_dir, col_dir = np.array(orientation[0][:3], float), np.array(orientation[0][3:], float)
        normal = np.cross(row_dir, col_dir)
        keys = [float(np.dot(np.asarray(p, float), normal)) for p in positions]
    else:
        keys = [float(getattr(ds, "InstanceNumber", 0) or 0) for _, ds in datasets]
    order = sorted(range(len(slices)), key=lambda n: (keys[n], str(datasets[n][0])))
    slices = [slices[n] for n in order]
    shapes = {s.shape for s in slices}
    if len(shapes) != 1 or slices[0].ndim != 2:
        raise VolumeError(f"{name}: DICOM slices differ in size or are not 2-D ({sorted(shapes)})")
    volume = np.stack(slices)  # (k, rows, cols)
    if not geometric:
        return volume
    # columns run along row_dir, rows along col_dir, slices along the normal: voxel order (col, row, k)
    return to_viewer(volume.transpose(2, 1, 0), np.stack([row_dir, col_dir, normal]), name)


# ---- dispatch ----------------------------------------------------------------------------------


def read_volume(path: str | os.PathLike[str]) -> np.ndarray:
    """Any supported volume -> (slices, rows, cols) float32 HU; a folder is read as one DICOM series."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series([p for p in path.iterdir() if p.is_file() and is_dicom_file(p)], path)
    if not path.is_file():
        raise VolumeError(f"{path}: no such file or folder")
    suffix = suffix_of(path)
    if suffix in NRRD_SUFFIXES:
        return read_nrrd(path)
    if suffix in INV3_SUFFIXES:
        return read_inv3(path)
    if suffix in NIBABEL_SUFFIXES:
        return read_nibabel(path)
    if is_dicom_file(path):
        return read_dicom_series([path], path)
    raise VolumeError(f"{path}: unknown volume format (expected NIfTI, Analyze .hdr/.img, NRRD, .inv3 or DICOM)")
