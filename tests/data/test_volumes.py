"""Volume readers (NRRD through pynrrd, the hand-written .inv3), the viewer orientation of all readers, and the
geometry that a volume written back keeps."""

import bz2
import gzip
import io
import plistlib
import tarfile

import numpy as np
import pytest

from ldm.data.intensity import read_slice
from ldm.data.volumes import (
    Volume,
    VolumeError,
    file_layout,
    grid_map,
    load_volume,
    parse_inv3,
    read_nrrd,
    read_volume,
    to_viewer,
    write_nifti,
)


def nrrd_bytes(
    data_ijk: np.ndarray,
    space: str = "left-posterior-superior",
    directions: str | None = None,
    encoding: str = "gzip",
    dtype: str = "<i2",
    type_name: str = "short",
) -> bytes:
    """An NRRD of a voxel array indexed (i, j, k), the first axis fastest on disk."""
    sizes = " ".join(str(s) for s in data_ijk.shape)
    directions = directions or "(1,0,0) (0,1,0) (0,0,1)"
    body = np.asarray(data_ijk).T.astype(dtype).tobytes()
    body = {"gzip": gzip.compress, "bzip2": bz2.compress, "raw": bytes}[encoding](body)
    endian = "big" if dtype.startswith(">") else "little"
    header = (
        f"NRRD0004\n# a comment\ntype: {type_name}\ndimension: {data_ijk.ndim}\nspace: {space}\n"
        f"sizes: {sizes}\nspace directions: {directions}\nendian: {endian}\nencoding: {encoding}\n"
        "key:=value\n\n"
    )
    return header.encode() + body


def marked_volume() -> np.ndarray:
    """(i, j, k) = (5, 4, 3) voxels, each value 100*i + 10*j + k."""
    i, j, k = np.indices((5, 4, 3))
    return (100 * i + 10 * j + k).astype(np.int16)


def test_committed_nrrd_fixture_matches_its_png_slices(fixtures_dir):
    volume = read_nrrd(fixtures_dir / "volumes" / "lung1_64x64x3.nrrd")
    assert volume.shape == (3, 64, 64) and volume.dtype == np.float32
    png, kind = read_slice(fixtures_dir / "CT" / "chest" / "chest_lung1_s01_slice_011.png")
    assert kind == "hu"
    np.testing.assert_array_equal(volume[0], png)


def test_lps_nrrd_reads_k_j_i(tmp_path):
    path = tmp_path / "v.nrrd"
    path.write_bytes(nrrd_bytes(marked_volume()))
    volume = read_volume(path)
    np.testing.assert_array_equal(volume, marked_volume().transpose(2, 1, 0))
    # slice 0 is the most inferior, row 0 the most anterior, col 0 the patient's right
    assert volume[0, 0, 0] == 0 and volume[2, 3, 4] == 432


@pytest.mark.parametrize("encoding", ["gzip", "bzip2", "raw"])
@pytest.mark.parametrize("dtype,type_name", [("<i2", "short"), (">i2", "int16"), ("<f4", "float"), ("<u2", "ushort")])
def test_nrrd_encodings_and_types(tmp_path, encoding, dtype, type_name):
    path = tmp_path / "v.nrrd"
    path.write_bytes(nrrd_bytes(marked_volume(), encoding=encoding, dtype=dtype, type_name=type_name))
    np.testing.assert_array_equal(read_nrrd(path), marked_volume().transpose(2, 1, 0))


def test_ras_nrrd_is_flipped_to_viewer_orientation(tmp_path):
    path = tmp_path / "ras.nrrd"
    path.write_bytes(nrrd_bytes(marked_volume(), space="right-anterior-superior"))
    volume = read_nrrd(path)
    # +i runs to the patient's right and +j anterior: both axes come out reversed
    np.testing.assert_array_equal(volume, marked_volume()[::-1, ::-1, :].transpose(2, 1, 0))


def test_sagittally_stored_nrrd_comes_out_axial(tmp_path):
    # voxel axis i runs superior, j posterior, k left (-ish, with a small obliquity)
    path = tmp_path / "sag.nrrd"
    path.write_bytes(nrrd_bytes(marked_volume(), directions="(0,0,2) (0,1,0) (-0.9,0,0.1)"))
    volume = read_nrrd(path)
    assert volume.shape == (5, 4, 3)
    np.testing.assert_array_equal(volume, marked_volume()[:, :, ::-1])  # already (S, P, L) once k is reversed


def test_detached_nrrd_header(tmp_path):
    data = marked_volume()
    (tmp_path / "v.raw").write_bytes(data.T.astype("<i2").tobytes())
    (tmp_path / "v.nhdr").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 5 4 3\nendian: little\nencoding: raw\ndata file: v.raw\n\n"
    )
    np.testing.assert_array_equal(read_volume(tmp_path / "v.nhdr"), data.transpose(2, 1, 0))


@pytest.mark.parametrize(
    "content,message",
    [
        (b"P5 not nrrd", "no NRRD000x magic"),
        (b"NRRD0004\ntype: short\ndimension: 2\nsizes: 4 4\nendian: little\nencoding: raw\n\n" + bytes(32),
         "expected 3-D"),
        (b"NRRD0004\ntype: block\ndimension: 3\nsizes: 2 2 2\nencoding: raw\n\n", "cannot read as NRRD"),
        (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nendian: little\nencoding: raw\n\n" + bytes(10),
         "cannot read as NRRD"),
        (b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nendian: little\nencoding: gzip\n\nnotgzip",
         "cannot read as NRRD"),
        (b"NRRD0004\ngarbage line\n\n", "cannot read as NRRD"),
    ],
)
def test_bad_nrrd_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad_volume.nrrd"
    path.write_bytes(content)
    with pytest.raises(VolumeError, match=f"bad_volume.nrrd.*{message}"):
        read_nrrd(path)


def inv3_bytes(matrix: np.ndarray) -> bytes:
    main = {"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(matrix.shape)}, "modality": "CT"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in (("main.plist", plistlib.dumps(main)), ("matrix.dat", matrix.astype("<i2").tobytes())):
            info = tarfile.TarInfo(f"tmpproj/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def test_inv3_rows_are_flipped_to_viewer_orientation(tmp_path):
    matrix = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 1000
    path = tmp_path / "Head.inv3"
    path.write_bytes(inv3_bytes(matrix))
    volume = read_volume(path)
    np.testing.assert_array_equal(volume, matrix[:, ::-1, :])
    np.testing.assert_array_equal(parse_inv3(inv3_bytes(matrix), "x"), volume)


def test_bad_inv3_names_the_file(tmp_path):
    path = tmp_path / "broken.inv3"
    path.write_bytes(b"not a tar")
    with pytest.raises(VolumeError, match="broken.inv3: not a readable InVesalius project"):
        read_volume(path)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz"):
        pass
    path.write_bytes(buffer.getvalue())
    with pytest.raises(VolumeError, match="broken.inv3: no main.plist"):
        read_volume(path)


def test_to_viewer_refuses_ambiguous_axes():
    with pytest.raises(VolumeError, match="vol: voxel axes"):
        to_viewer(np.zeros((2, 2, 2)), np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]]), "vol")


def test_unknown_or_missing_volume_names_the_path(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(VolumeError, match="notes.txt: unknown volume format"):
        read_volume(tmp_path / "notes.txt")
    with pytest.raises(VolumeError, match="absent.nii: no such file"):
        read_volume(tmp_path / "absent.nii")
    with pytest.raises(VolumeError, match="no DICOM files"):
        read_volume(tmp_path)


# ---- geometry: the viewer affine, the file layout written back, the SR grid --------------------


def test_the_viewer_affine_places_each_voxel_where_the_file_does(tmp_path):
    nib = pytest.importorskip("nibabel")
    # voxel i runs posterior, j to the patient's right (a permutation and a flip), k superior; anisotropic
    ras = np.array([[0, 0.6, 0, 10], [-0.8, 0, 0, -20], [0, 0, 2.5, 30], [0, 0, 0, 1]], dtype=float)
    data = marked_volume()
    nib.save(nib.Nifti1Image(data, ras), tmp_path / "v.nii.gz")
    volume = load_volume(tmp_path / "v.nii.gz")
    lps_from_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    for index in np.ndindex(volume.hu.shape):
        world = volume.affine @ [*index, 1]
        i, j, k = np.rint(np.linalg.solve(lps_from_ras @ ras, world)[:3]).astype(int)
        assert volume.hu[index] == data[i, j, k]
    # back in the file's own voxel order, with the file's affine (the inverse of the reading)
    file_data, file_affine = file_layout(volume)
    np.testing.assert_array_equal(file_data, data)
    np.testing.assert_allclose(file_affine, lps_from_ras @ ras)


def test_the_sr_grid_keeps_the_extent_as_the_implicit_decoders_coordinates_do():
    """Output pixel i of N sits at (i + 1/2) / N of the extent, as make_coord puts it in [-1, 1]."""
    from ldm.modules.implicit.coords import make_coord

    in_shape, out_shape = (3, 8, 10), (3, 20, 25)  # x2.5 in-plane
    index_map = grid_map(in_shape, out_shape)
    centres = make_coord(out_shape[1:], flatten=False).numpy()  # (20, 25, 2) in [-1, 1]
    for row, col in ((0, 0), (7, 13), (19, 24)):
        in_index = index_map @ [1, row, col, 1]
        expected = (centres[row, col] + 1) / 2 * np.array(in_shape[1:]) - 0.5  # input pixel index of that point
        np.testing.assert_allclose(in_index[1:3], expected, atol=1e-6)
        assert in_index[0] == 1  # the slice axis is not resampled
    # the outer edges of first and last pixels coincide: -1/2 and n - 1/2 in either grid
    np.testing.assert_allclose((index_map @ [0, -0.5, -0.5, 1])[1:3], [-0.5, -0.5])
    np.testing.assert_allclose((index_map @ [0, 19.5, 24.5, 1])[1:3], [7.5, 9.5])


def test_written_nifti_is_int16_hu_with_unit_scaling_and_replaced_atomically(tmp_path, monkeypatch):
    nib = pytest.importorskip("nibabel")
    import ldm.data.volumes as volumes

    hu = np.array([-1024.4, 40.6, 40000.0, -40000.0], dtype=np.float32).reshape(1, 2, 2)
    volume = Volume(hu, np.diag([2.5, 0.5, 0.5, 1.0]))
    write_nifti(tmp_path / "v.nii.gz", volume)
    img = nib.load(tmp_path / "v.nii.gz")
    assert img.get_data_dtype() == np.int16 and (img.dataobj.slope, img.dataobj.inter) == (1.0, 0.0)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj).transpose(2, 1, 0), [[[-1024, 41], [32767, -32768]]])
    before = (tmp_path / "v.nii.gz").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(volumes.gzip, "compress", interrupted)  # dies while writing the temp file
    with pytest.raises(KeyboardInterrupt):
        write_nifti(tmp_path / "v.nii.gz", volume)
    assert (tmp_path / "v.nii.gz").read_bytes() == before and len(list(tmp_path.iterdir())) == 1
