"""CT volume readers -> float32 HU arrays of shape (slices, rows, cols), each slice as a viewer shows it,
with the geometry that places every voxel in the patient (`Volume`).

Viewer orientation (radiological, the DICOM/PACS habit): the patient's anterior at the top,
the patient's right on the image's left, slices from inferior to superior. Every reader
brings its file's voxel axes there through `to_viewer` from the direction vectors the file
declares, so the slices of one patient look the same whatever format they came in. The reader
also keeps the affine of the viewer array (index -> LPS world mm) and how the file's own voxel
axes map onto it, so that a volume written back keeps the file's axes and
direction cosines and overlays the input in any viewer (`write_nifti`).

NIfTI/Analyze, NRRD and DICOM go through the field's own readers (nibabel, pynrrd, pydicom),
imported only when such a file is read; the InVesalius .inv3 project is a tar of a plist and a
raw matrix, read by hand.
"""

from __future__ import annotations

import gzip
import importlib
import io
import os
import plistlib
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from ldm.util import atomic_path

# voxel-axis directions are given in LPS world coordinates (+x patient left, +y posterior, +z superior)
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
NIBABEL_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".img")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
INV3_SUFFIXES = (".inv3",)
DICOM_SUFFIXES = (".dcm",)
INT16_RANGE = (-32768, 32767)
KNOWN_SUFFIXES = (*NIBABEL_SUFFIXES, *NRRD_SUFFIXES, *INV3_SUFFIXES, *DICOM_SUFFIXES)
# an .img is the data half of an .hdr pair and is read through its header
VOLUME_SUFFIXES = tuple(s for s in KNOWN_SUFFIXES if s not in (".img", *DICOM_SUFFIXES))

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


@dataclass
class Volume:
    """A CT volume in viewer orientation with its place in the patient.

    hu: (slices, rows, cols) float32 HU. affine: (4, 4), viewer voxel index (slice, row, col, 1)
    -> LPS world mm of that voxel's centre. file_axes[a] is the viewer axis that the file's voxel
    axis a became and file_flips[a] whether it was reversed on the way, so the file's own voxel
    order can be restored. assumed: "" when the file declares its geometry, else what was assumed.
    """

    hu: np.ndarray
    affine: np.ndarray
    file_axes: tuple[int, int, int] = (2, 1, 0)
    file_flips: tuple[bool, bool, bool] = (False, False, False)
    assumed: str = ""


def suffix_of(path: Path) -> str:
    """Lower-case suffix, with .nii.gz kept whole."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def slice_name(stem: str, index: int, count: int) -> str:
    """`<stem>_slice_<NNN>.png`, 1-based, zero-padded to 3 digits (more for longer volumes): how a
    volume's slices are named by the converter and by sr.py alike."""
    return f"{stem}_slice_{index + 1:0{max(3, len(str(count)))}d}.png"


def volume_stem(path: Path) -> str:
    """File name without its volume suffix (.nii.gz whole); a DICOM folder's name as it is."""
    suffix = suffix_of(path)
    return path.name[: -len(suffix)] if suffix in KNOWN_SUFFIXES else path.name


def viewer_axes(directions: np.ndarray, name: str | os.PathLike[str] = "volume") -> tuple[list[int], list[bool]]:
    """(order, flips): viewer axis v is voxel axis order[v], read backwards where flips[axis].

    directions[a] is the LPS world vector of voxel axis a. Each voxel axis is matched to the
    world axis it runs closest to and flipped where it runs backwards, so an oblique or
    sagittally stored volume still comes out as axial slices (no resampling: the nearest
    axis-aligned reading).
    """
    directions = np.asarray(directions, dtype=np.float64)
    world_axis = np.abs(directions).argmax(axis=1)
    if sorted(world_axis.tolist()) != [0, 1, 2]:
        raise VolumeError(f"{name}: voxel axes do not map to distinct patient axes (directions {directions.tolist()})")
    flips = [bool(directions[axis, world_axis[axis]] < 0) for axis in range(3)]
    # slices along S (world z), rows along P (world y), cols along L (world x)
    order = [int(np.flatnonzero(world_axis == w)[0]) for w in (2, 1, 0)]
    return order, flips


def to_viewer(data: np.ndarray, directions: np.ndarray, name: str | os.PathLike[str] = "volume") -> np.ndarray:
    """Voxel array indexed (i, j, k) -> (slices, rows, cols) in viewer orientation (see viewer_axes)."""
    order, flips = viewer_axes(directions, name)
    data = np.flip(data, [axis for axis in range(3) if flips[axis]])
    return np.ascontiguousarray(data.transpose(order), dtype=np.float32)


def file_index_map(
    viewer_shape: tuple[int, ...], file_axes: tuple[int, ...], file_flips: tuple[bool, ...]
) -> np.ndarray:
    """(4, 4) map from a viewer voxel index to the file voxel index of the same voxel."""
    index_map = np.zeros((4, 4))
    index_map[3, 3] = 1.0
    for axis, (view_axis, flip) in enumerate(zip(file_axes, file_flips, strict=True)):
        index_map[axis, view_axis] = -1.0 if flip else 1.0
        index_map[axis, 3] = viewer_shape[view_axis] - 1.0 if flip else 0.0
    return index_map


def oriented(data: np.ndarray, affine: np.ndarray, name: str | os.PathLike[str], assumed: str = "") -> Volume:
    """A file's voxel array (i, j, k) and its (4, 4) LPS affine -> the Volume in viewer orientation."""
    affine = np.asarray(affine, dtype=np.float64)
    order, flips = viewer_axes(affine[:3, :3].T, name)
    hu = to_viewer(data, affine[:3, :3].T, name)
    file_axes = tuple(order.index(axis) for axis in range(3))
    viewer_affine = affine @ file_index_map(hu.shape, file_axes, tuple(flips))
    return Volume(hu, viewer_affine, file_axes, tuple(flips), assumed)


def _as_3d(data: np.ndarray, name: str | os.PathLike[str]) -> np.ndarray:
    """Drop trailing singleton axes (a 4-D file with one time point is a volume); refuse anything else."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{name}: expected 3-D data, got shape {tuple(data.shape)}")
    return data


def _require(module: str, path: Path, kind: str, package: str | None = None) -> ModuleType:
    package = package or module
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise VolumeError(f"{path}: reading {kind} needs {package} (pip install {package})") from err


# ---- NRRD (pynrrd) ------------------------------------------------------------------------------


def _nrrd_affine(header: dict, name: str) -> tuple[np.ndarray, str]:
    """(LPS affine of the voxel axes, what was assumed) from the space, its directions and origin."""
    space = str(header.get("space", "")).lower()
    affine = np.eye(4)
    if "space directions" in header and space in NRRD_SPACES:
        directions = np.asarray(header["space directions"], dtype=np.float64)
        if directions.shape != (3, 3) or not np.isfinite(directions).all():
            raise VolumeError(f"{name}: expected 3 spatial NRRD space directions, got {directions.tolist()}")
        signs = np.array(NRRD_SPACES[space], dtype=np.float64)
        affine[:3, :3] = (directions * signs).T
        affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64) * signs
        return affine, ""
    spacings = np.asarray(header.get("spacings", np.ones(3)), dtype=np.float64)
    affine[:3, :3] = np.diag(np.where(np.isfinite(spacings), spacings, 1.0))
    return affine, f"no patient space in the NRRD header: axes taken as LPS, spacing {spacings.tolist()}"


def nrrd_volume(raw: bytes, name: str | os.PathLike[str], path: Path | None = None) -> Volume:
    """NRRD bytes -> Volume; `path` (the header's own file) resolves a detached data file."""
    nrrd = _require("nrrd", Path(name), "NRRD", "pynrrd")
    if not raw.startswith(b"NRRD000"):
        raise VolumeError(f"{name}: not an NRRD file (no NRRD000x magic)")
    fh = io.BytesIO(raw)
    try:
        header = nrrd.read_header(fh)
        if header.get("dimension") != 3:
            raise VolumeError(f"{name}: expected 3-D data, got dimension {header.get('dimension')}")
        data = nrrd.read_data(header, fh, None if path is None else str(path))  # (i, j, k): index_order F
    except VolumeError:
        raise
    except Exception as err:  # pynrrd raises NRRDError, and ValueError/OSError/zlib errors from the body
        raise VolumeError(f"{name}: cannot read as NRRD ({type(err).__name__}: {err})") from err
    affine, assumed = _nrrd_affine(header, str(name))
    return oriented(data, affine, name, assumed)


def parse_nrrd(raw: bytes, name: str | os.PathLike[str], folder: Path | None = None) -> np.ndarray:
    """NRRD bytes -> (slices, rows, cols) float32; `folder` resolves a detached header's data file."""
    return nrrd_volume(raw, name, None if folder is None else folder / Path(name).name).hu


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise VolumeError(f"{path}: cannot read ({err.strerror})") from err


def read_nrrd(path: str | os.PathLike[str]) -> np.ndarray:
    path = Path(path)
    return nrrd_volume(_read_bytes(path), path, path).hu


# ---- InVesalius project (.inv3) ----------------------------------------------------------------


def inv3_volume(raw: bytes, name: str | os.PathLike[str]) -> Volume:
    """An InVesalius 3 project (tar.gz: main.plist + raw matrix) -> Volume (axes as LPS, the plist's spacing)."""
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
    viewer = np.frombuffer(body, dtype=dtype).reshape(shape)[:, ::-1, :]
    spacing = [float(v) for v in main.get("spacing", ())]
    spacing = spacing if len(spacing) == 3 else [1.0, 1.0, 1.0]
    assumed = "an InVesalius project has no patient orientation: axes taken as LPS"
    return oriented(viewer.transpose(2, 1, 0), np.diag([*spacing, 1.0]), name, assumed)  # (x, y, z) voxel axes


def parse_inv3(raw: bytes, name: str | os.PathLike[str]) -> np.ndarray:
    """An InVesalius 3 project -> (slices, rows, cols) float32 HU."""
    return inv3_volume(raw, name).hu


# ---- NIfTI / Analyze 7.5 (nibabel) -------------------------------------------------------------


def nibabel_volume(path: str | os.PathLike[str]) -> Volume:
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
    affine = np.eye(4)
    affine[:3] = LPS_FROM_RAS @ np.asarray(img.affine, dtype=np.float64)[:3]  # nibabel's affine is RAS
    return oriented(data, affine, path)


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


def _dicom_affine(datasets: list[object], positions: list[np.ndarray], normal: np.ndarray) -> np.ndarray:
    """LPS affine of voxel axes (col, row, slice) of a series sorted along its normal.

    DICOM: ImageOrientationPatient holds the direction of increasing column index, then of
    increasing row index; PixelSpacing is (between rows, between columns); the slice step is the
    mean distance between consecutive ImagePositionPatient along the normal.
    """
    first = datasets[0]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row_mm, col_mm = (float(v) for v in getattr(first, "PixelSpacing", (1.0, 1.0)))
    if len(positions) > 1:
        step = float(np.dot(positions[-1] - positions[0], normal)) / (len(positions) - 1)
    else:
        step = float(getattr(first, "SpacingBetweenSlices", 0) or getattr(first, "SliceThickness", 0) or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = orientation[:3] * col_mm
    affine[:3, 1] = orientation[3:] * row_mm
    affine[:3, 2] = normal * (step if step > 0 else 1.0)  # equal positions: keep a valid, invertible affine
    affine[:3, 3] = positions[0]
    return affine


def dicom_series_volume(files: list[Path], name: str | os.PathLike[str]) -> Volume:
    """One DICOM series (a folder's .dcm files) -> Volume in HU.

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
    no_geometry = "no ImageOrientation/PositionPatient: axes taken as LPS, spacing 1 mm"
    if len(slices) == 1 and slices[0].ndim == 3:  # one multi-frame file: frames are already in order
        return oriented(slices[0].transpose(2, 1, 0), np.eye(4), name, f"multi-frame DICOM, {no_geometry}")
    orientation = [getattr(ds, "ImageOrientationPatient", None) for _, ds in datasets]
    positions = [getattr(ds, "ImagePositionPatient", None) for _, ds in datasets]
    geometric = all(o is not None and len(o) == 6 for o in orientation) and all(
        p is not None and len(p) == 3 for p in positions
    )
    if geometric:
        normal = np.cross(np.array(orientation[0][:3], float), np.array(orientation[0][3:], float))
        keys = [float(np.dot(np.asarray(p, float), normal)) for p in positions]
    else:
        keys = [float(getattr(ds, "InstanceNumber", 0) or 0) for _, ds in datasets]
    order = sorted(range(len(slices)), key=lambda n: (keys[n], str(datasets[n][0])))
    slices = [slices[n] for n in order]
    shapes = {s.shape for s in slices}
    if len(shapes) != 1 or slices[0].ndim != 2:
        raise VolumeError(f"{name}: DICOM slices differ in size or are not 2-D ({sorted(shapes)})")
    volume = np.stack(slices).transpose(2, 1, 0)  # voxel axes (col, row, slice)
    if not geometric:
        return oriented(volume, np.eye(4), name, no_geometry)
    sorted_positions = [np.asarray(positions[n], dtype=np.float64) for n in order]
    affine = _dicom_affine([datasets[n][1] for n in order], sorted_positions, normal)
    return oriented(volume, affine, name)


def read_dicom_series(files: list[Path], name: str | os.PathLike[str]) -> np.ndarray:
    """One DICOM series -> (slices, rows, cols) float32 HU (see dicom_series_volume)."""
    return dicom_series_volume(files, name).hu


# ---- dispatch ----------------------------------------------------------------------------------


def load_volume(path: str | os.PathLike[str]) -> Volume:
    """Any supported volume -> Volume; a folder is read as one DICOM series."""
    path = Path(path)
    if path.is_dir():
        return dicom_series_volume([p for p in path.iterdir() if p.is_file() and is_dicom_file(p)], path)
    if not path.is_file():
        raise VolumeError(f"{path}: no such file or folder")
    suffix = suffix_of(path)
    if suffix in NRRD_SUFFIXES:
        return nrrd_volume(_read_bytes(path), path, path)
    if suffix in INV3_SUFFIXES:
        return inv3_volume(_read_bytes(path), path)
    if suffix in NIBABEL_SUFFIXES:
        return nibabel_volume(path)
    if is_dicom_file(path):
        return dicom_series_volume([path], path)
    raise VolumeError(f"{path}: unknown volume format (expected NIfTI, Analyze .hdr/.img, NRRD, .inv3 or DICOM)")


def read_volume(path: str | os.PathLike[str]) -> np.ndarray:
    """Any supported volume -> (slices, rows, cols) float32 HU; a folder is read as one DICOM series."""
    return load_volume(path).hu


# ---- geometry of a super-resolved volume, and writing it -----------------------------------------


def grid_map(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """(4, 4) map from an output voxel index to the input voxel index of the same point.

    Both grids cover the same extent with pixel centres at (i + 1/2) / n of it, the convention
    of the implicit decoder's coordinates (ldm.modules.implicit.coords.make_coord, grid_sample's
    align_corners=False): so the spacing grows by in/out and the first centre moves by
    (in/out - 1) / 2 input voxels.
    """
    ratio = np.asarray(in_shape, dtype=np.float64) / np.asarray(out_shape, dtype=np.float64)
    index_map = np.diag([*ratio, 1.0])
    index_map[:3, 3] = (ratio - 1.0) / 2.0
    return index_map


def resampled(volume: Volume, hu: np.ndarray) -> Volume:
    """The volume's field of view holding `hu`, an (slices, rows', cols') resampling of it (e.g. its SR)."""
    if hu.ndim != 3 or hu.shape[0] != volume.hu.shape[0]:
        raise ValueError(f"resampled: expected {volume.hu.shape[0]} slices, got shape {hu.shape}")
    affine = volume.affine @ grid_map(volume.hu.shape, hu.shape)
    return Volume(hu, affine, volume.file_axes, volume.file_flips, volume.assumed)


def file_layout(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """(voxel array in the file's axis order, its (4, 4) LPS affine): the inverse of `oriented`."""
    flipped = [axis for axis in range(3) if volume.file_flips[axis]]
    data = np.flip(volume.hu.transpose(volume.file_axes), flipped)
    affine = volume.affine @ np.linalg.inv(file_index_map(volume.hu.shape, volume.file_axes, volume.file_flips))
    return data, affine


def hu_to_int16(hu: np.ndarray) -> np.ndarray:
    """HU -> int16, rounded and clipped to the int16 range (CT volumes are stored as int16 HU)."""
    return np.clip(np.rint(np.asarray(hu, dtype=np.float64)), *INT16_RANGE).astype(np.int16)


def write_nifti(path: str | os.PathLike[str], volume: Volume, dtype: type = np.int16) -> None:
    """Write a volume as NIfTI-1 (.nii or .nii.gz by the name) in its file's voxel order, atomically.

    Values are HU: int16 (rounded, clipped) or float32, with scl_slope 1 and scl_inter 0; the
    affine goes into both the sform and the qform (code 1, scanner), in nibabel's RAS.
    """
    path = Path(path)
    nib = _require("nibabel", path, "NIfTI")
    data, affine = file_layout(volume)
    data = hu_to_int16(data) if np.dtype(dtype) == np.int16 else np.asarray(data, dtype=dtype)
    ras = np.eye(4)
    ras[:3] = LPS_FROM_RAS @ affine[:3]  # the sign flip is its own inverse
    img = nib.Nifti1Image(np.ascontiguousarray(data), ras)
    img.set_sform(ras, code=1)
    img.set_qform(ras, code=1)
    img.header.set_xyzt_units("mm")
    img.header.set_slope_inter(1.0, 0.0)
    raw = img.to_bytes()
    with atomic_path(path) as tmp:  # nibabel names formats by suffix: write its bytes to the temp file
        tmp.write_bytes(gzip.compress(raw, mtime=0) if suffix_of(path) == ".nii.gz" else raw)
