"""Volume -> PNG slice conversion: names carry the patient, HU survive, failures leave nothing behind."""

import sys

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ldm.data import convert
from ldm.data.convert import ConvertError, main, volume_names
from ldm.data.intensity import read_slice, window_to_png8
from ldm.data.volumes import VolumeError, read_volume


def ras_volume() -> np.ndarray:
    """(i, j, k) = (6, 5, 4) int16 HU: a ramp, with one bright voxel at the patient's right-anterior."""
    i, j, k = np.indices((6, 5, 4))
    data = (-1000 + 10 * i + 100 * j + 300 * k).astype(np.int16)
    data[5, 4, 0] = 2000  # RAS: largest i is the patient's right, largest j anterior, k=0 inferior
    return data


def outputs(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def test_nifti_is_converted_with_patient_series_names_and_hu(tmp_path):
    nib.save(nib.Nifti1Image(ras_volume(), np.eye(4)), tmp_path / "p7_ser1.nii.gz")
    out = tmp_path / "CT" / "covid"
    assert main([str(tmp_path / "p7_ser1.nii.gz"), "--out", str(out), "--prefix", "covid"]) == 0
    assert outputs(out) == [f"covid_p7_ser1_slice_{n:03d}.png" for n in range(1, 5)]
    first, kind = read_slice(out / "covid_p7_ser1_slice_001.png")
    assert kind == "hu" and first.shape == (5, 6)
    assert first[0, 0] == 2000  # viewer orientation: anterior on top, patient's right on the left
    expected = read_volume(tmp_path / "p7_ser1.nii.gz")
    for n in range(4):
        np.testing.assert_array_equal(read_slice(out / f"covid_p7_ser1_slice_{n + 1:03d}.png")[0], expected[n])


def test_analyze_pair_in_a_folder(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    data = ras_volume()
    nib.save(nib.AnalyzeImage(data, np.diag([-1.0, 1.0, 1.0, 1.0])), src / "p100_ns002i00001.hdr")
    assert sorted(p.name for p in src.iterdir()) == ["p100_ns002i00001.hdr", "p100_ns002i00001.img"]
    out = tmp_path / "CT" / "covid"
    assert main([str(src), "--out", str(out), "--prefix", "covid"]) == 0
    assert outputs(out) == [f"covid_p100_ns002i00001_slice_{n:03d}.png" for n in range(1, 5)]
    # Analyze stores no orientation; nibabel's default is radiological (x flipped), so i runs to the left
    first = read_slice(out / "covid_p100_ns002i00001_slice_001.png")[0]
    np.testing.assert_array_equal(first, data[:, ::-1, 0].T)


def dicom_slice(path, z: float, pixels: np.ndarray, number: int, series_uid: str, with_pixels: bool = True):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.SeriesInstanceUID = "CT", "anon", series_uid
    ds.InstanceNumber = number
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-100.0, -100.0, z]
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if with_pixels:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_series(folder, n: int = 4, with_pixels: bool = True) -> list[np.ndarray]:
    """n slices of distinct constant-free content, files named against the z order; returns HU per z."""
    folder.mkdir(parents=True)
    uid = generate_uid()
    slices = []
    for n_z, z in enumerate([-30.0, -27.5, -25.0, -22.5][:n]):
        stored = (np.arange(12).reshape(3, 4) * 50 + 1000 + 100 * n_z).astype(np.uint16)
        slices.append(stored.astype(np.float32) - 1024)
        # file names and instance numbers run backwards: only the positions give the order
        dicom_slice(folder / f"IM{n - n_z:04d}", z, stored, number=n - n_z, series_uid=uid, with_pixels=with_pixels)
    return slices


def test_dicom_series_is_sorted_by_position_and_rescaled(tmp_path):
    hu = write_series(tmp_path / "dicom" / "ser3")
    out = tmp_path / "CT" / "chest"
    assert main([str(tmp_path / "dicom"), "--out", str(out), "--prefix", "chest", "--patient", "p9"]) == 0
    assert outputs(out) == [f"chest_p9_ser3_slice_{n:03d}.png" for n in range(1, 5)]
    for n in range(4):
        np.testing.assert_array_equal(read_slice(out / f"chest_p9_ser3_slice_{n + 1:03d}.png")[0], hu[n])


def test_dicom_without_pixel_data_is_a_clear_error(tmp_path, capsys):
    write_series(tmp_path / "ser1", n=2, with_pixels=False)
    out = tmp_path / "CT" / "chest"
    assert main([str(tmp_path / "ser1"), "--out", str(out), "--prefix", "chest", "--patient", "p1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "IM0001" in err and "no pixel data" in err
    assert outputs(out) == []


def test_window_writes_8bit_windowed_slices(tmp_path):
    nib.save(nib.Nifti1Image(ras_volume(), np.eye(4)), tmp_path / "case7.nii")
    out = tmp_path / "CT" / "covid"
    assert main([str(tmp_path / "case7.nii"), "--out", str(out), "--prefix", "covid", "--window", "-1000", "400"]) == 0
    values, kind = read_slice(out / "covid_case7_s01_slice_002.png")
    assert kind == "u8"
    expected = window_to_png8(read_volume(tmp_path / "case7.nii")[1], (-1000.0, 400.0))
    np.testing.assert_allclose(values, np.rint(expected))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p.write_bytes(b"\x1f\x8b garbage"), "cannot read as NIfTI/Analyze"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4)), p), "expected 3-D"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((4, 4), np.int16), np.eye(4)), p), "expected 3-D"),
    ],
)
def test_unreadable_or_non_3d_volume_names_the_file(tmp_path, capsys, make, message):
    make(tmp_path / "p5_bad.nii.gz")
    out = tmp_path / "CT" / "covid"
    assert main([str(tmp_path / "p5_bad.nii.gz"), "--out", str(out), "--prefix", "covid"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "p5_bad.nii.gz" in err and message in err
    assert outputs(out) == []


def test_failure_while_writing_leaves_no_partial_volume(tmp_path, monkeypatch, capsys):
    nib.save(nib.Nifti1Image(ras_volume(), np.eye(4)), tmp_path / "p7_ser1.nii.gz")
    out = tmp_path / "CT" / "covid"
    real_write, calls = convert.write_png16_hu, []

    def flaky(path, hu):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path))
        real_write(path, hu)

    monkeypatch.setattr(convert, "write_png16_hu", flaky)
    assert main([str(tmp_path / "p7_ser1.nii.gz"), "--out", str(out), "--prefix", "covid"]) == 1
    assert "No space left" in capsys.readouterr().err
    assert outputs(out) == []


def test_missing_reader_says_what_to_install(tmp_path, monkeypatch):
    nib.save(nib.Nifti1Image(ras_volume(), np.eye(4)), tmp_path / "p7.nii")
    monkeypatch.setitem(sys.modules, "nibabel", None)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(VolumeError, match=r"p7.nii: .*pip install nibabel"):
        read_volume(tmp_path / "p7.nii")
    write_series(tmp_path / "ser", n=1)
    with pytest.raises(VolumeError, match=r"ser: .*pip install pydicom"):
        read_volume(tmp_path / "ser")


def test_names_from_files_and_patient_option(tmp_path):
    assert volume_names(tmp_path / "p100_ns002i00001.hdr", "covid") == "covid_p100_ns002i00001"
    assert volume_names(tmp_path / "case7.nii.gz", "normal") == "normal_case7_s01"
    assert volume_names(tmp_path / "lung_1 scan.nrrd", "chest") == "chest_lung_1-scan"
    assert volume_names(tmp_path / "p100_ns002i00001.hdr", "covid", "p100") == "covid_p100_ns002i00001"
    assert volume_names(tmp_path / "series_4", "covid", "pat_7") == "covid_pat-7_series_4"
    with pytest.raises(ConvertError, match="no patient id"):
        volume_names(tmp_path / "_x.nii", "covid")


def test_bad_options_and_sources(tmp_path, capsys):
    nib.save(nib.Nifti1Image(ras_volume(), np.eye(4)), tmp_path / "ct.nii")
    (tmp_path / "b").mkdir()
    nib.save(nib.Nifti1Image(ras_volume(), np.eye(4)), tmp_path / "b" / "ct.nii")
    out = tmp_path / "out"
    ct = str(tmp_path / "ct.nii")
    cases = [
        ([ct, "--prefix", "covid_19"], "--prefix 'covid_19'"),
        ([str(tmp_path / "absent"), "--prefix", "covid"], "absent: no such file"),
        ([ct, "--prefix", "covid", "--window", "400", "-1000"], "--window 400 -1000"),
        ([str(tmp_path), "--prefix", "covid"], "both map to covid_ct_s01"),
        ([str(tmp_path / "b" / "ct.nii"), "--prefix", "x-y", "--patient", "_"], "no patient id"),
    ]
    for args, message in cases:
        assert main([*args, "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert outputs(out) == []
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(out), "--prefix", "covid"]) == 1
    assert "no NIfTI, Analyze, NRRD, .inv3 or DICOM volumes" in capsys.readouterr().err
