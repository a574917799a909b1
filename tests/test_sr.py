"""sr.py: one's own PNG / DICOM / volume slices as LR, at any scale; bad files reported, the rest written."""

import numpy as np
import pytest
from logdir_helpers import data_config, fake_model_config, load_script, make_logdir, phantom_hu
from PIL import Image

from ldm.data.intensity import read_slice, write_png8, write_png16_hu
from ldm.pipeline import Pipeline

sr = load_script("sr")


@pytest.fixture
def run_dir(tmp_path):
    return make_logdir(tmp_path / "logs", fake_model_config(), data_config(tmp_path / "CT"), name="fake")


@pytest.fixture
def ldm_dir(tmp_path):
    return make_logdir(tmp_path / "logs", fake_model_config("ldm"), data_config(tmp_path / "CT"), name="sampler")


def run(capsys, *argv):
    rc = sr.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_16_bit_png_keeps_hu_and_its_name(capsys, run_dir, tmp_path):
    write_png16_hu(tmp_path / "in" / "scan.png", phantom_hu(20))
    rc, out, _ = run(capsys, "--exp", run_dir, "--input", tmp_path / "in" / "scan.png", "--scale", 2.5,
                     "--out", tmp_path / "out")
    assert rc == 0 and "wrote 1 slice" in out
    values, kind = read_slice(tmp_path / "out" / "scan.png")
    assert kind == "hu" and values.shape == (50, 50)
    assert values.min() == pytest.approx(-1000, abs=30) and values.max() > 500  # air and bone survive


def test_8_bit_png_gives_8_bit_output_at_an_explicit_size(capsys, run_dir, tmp_path):
    write_png8(tmp_path / "view.png", np.tile(np.linspace(0, 255, 16), (12, 1)))
    rc, _, _ = run(capsys, "--exp", run_dir, "--input", tmp_path / "view.png", "--out_size", 30, 40,
                   "--out", tmp_path / "out")
    assert rc == 0
    with Image.open(tmp_path / "out" / "view.png") as im:
        assert im.mode == "L" and im.size == (40, 30)


def test_a_folder_with_a_corrupt_png_writes_the_rest_and_exits_1(capsys, run_dir, tmp_path):
    folder = tmp_path / "in"
    write_png16_hu(folder / "a.png", phantom_hu(16, seed=1))
    write_png16_hu(folder / "sub" / "b.png", phantom_hu(16, seed=2))
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    rc, out, err = run(capsys, "--exp", run_dir, "--input", folder, "--scale", 2, "--out", tmp_path / "out")
    assert rc == 1
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "sub" / "b.png").is_file()
    assert not (tmp_path / "out" / "broken.png").exists() and not (tmp_path / "out" / "notes.png").exists()
    assert "wrote 2 slice(s)" in out
    assert "failed (1)" in err and "broken.png" in err and "Traceback" not in err


def test_samples_give_a_mean_and_a_std_map_reproducibly(capsys, ldm_dir, tmp_path):
    write_png16_hu(tmp_path / "s.png", phantom_hu(16))
    for out in ("a", "b"):
        rc, _, _ = run(capsys, "--exp", ldm_dir, "--input", tmp_path / "s.png", "--scale", 2, "--n_samples", 4,
                       "--steps", 2, "--out", tmp_path / out)
        assert rc == 0
    with Image.open(tmp_path / "a" / "s_std.png") as im:
        std = np.array(im)
    assert std.dtype == np.uint16 and std.shape == (32, 32) and 10 < std.mean() < 60  # std in HU
    assert (tmp_path / "a" / "s.png").read_bytes() == (tmp_path / "b" / "s.png").read_bytes()


def test_format_png_writes_a_volume_slice_by_slice_like_the_converter(capsys, run_dir, fixtures_dir, tmp_path):
    rc, _, err = run(capsys, "--exp", run_dir, "--input", fixtures_dir / "volumes" / "lung1_64x64x3.nrrd",
                     "--scale", 1.5, "--format", "png", "--out", tmp_path / "out")
    assert rc == 0, err
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert names == [f"lung1_64x64x3_slice_00{i}.png" for i in (1, 2, 3)]
    assert read_slice(tmp_path / "out" / names[0])[0].shape == (96, 96)
    assert not list((tmp_path / "out").glob("*.nii.gz"))


# voxel i runs posterior, j to the patient's right, k superior: a permutation and a flip against
# nibabel's RAS, anisotropic, and away from the origin
RAS_AFFINE = np.array([[0, -0.6, 0, 10], [-0.8, 0, 0, -20], [0, 0, 2.5, 30], [0, 0, 0, 1]], dtype=float)


def fov_corners(affine, shape):
    """World positions of the 8 outer corners of a volume's field of view (voxel edges, not centres)."""
    return np.array([affine @ [*(np.array(c) * shape - 0.5), 1] for c in np.ndindex(2, 2, 2)])


@pytest.mark.parametrize("scale, in_plane", [(2, (16, 20)), (2.5, (20, 25))])
def test_a_nifti_volume_comes_back_as_one_volume_over_the_same_field_of_view(capsys, run_dir, tmp_path, scale,
                                                                             in_plane):
    nib = pytest.importorskip("nibabel")
    hu = np.full((8, 10, 3), 40, dtype=np.int16)  # file order (i, j, k)
    hu[:2, :2, 1] = 1000  # a marker in one corner of the middle slice
    nib.save(nib.Nifti1Image(hu, RAS_AFFINE), tmp_path / "case7.nii.gz")
    rc, out, err = run(capsys, "--exp", run_dir, "--input", tmp_path / "case7.nii.gz", "--scale", scale,
                       "--out", tmp_path / "out")
    assert rc == 0, err
    assert "wrote 3 slice(s) (1 volume(s))" in out and not list((tmp_path / "out").glob("*.png"))
    img = nib.load(tmp_path / "out" / "case7.nii.gz")
    shape = (*in_plane, 3)
    assert img.shape == shape and img.get_data_dtype() == np.int16
    assert (img.dataobj.slope, img.dataobj.inter) == (1.0, 0.0)
    # spacing x in/out in-plane, through-plane kept; the same direction cosines; the same field of view
    np.testing.assert_allclose(img.header.get_zooms(), [0.8 * 8 / in_plane[0], 0.6 * 10 / in_plane[1], 2.5],
                               rtol=1e-6)
    np.testing.assert_allclose(img.affine[:3, :3] / img.header.get_zooms(), RAS_AFFINE[:3, :3] / [0.8, 0.6, 2.5],
                               atol=1e-6)
    np.testing.assert_allclose(fov_corners(img.affine, shape), fov_corners(RAS_AFFINE, hu.shape), atol=1e-4)
    # the first voxel centre moved by (new - old spacing) / 2 along each in-plane axis
    step = (img.header.get_zooms()[0] - 0.8) / 2, (img.header.get_zooms()[1] - 0.6) / 2
    np.testing.assert_allclose(img.affine[:3, 3], RAS_AFFINE[:3, 3] + [-step[1], -step[0], 0], atol=1e-5)
    sr = np.asanyarray(img.dataobj)
    assert (sr[-4:, -4:, :] == 40).all() and (sr[..., [0, 2]][-8:] == 40).all()  # HU round trip, exactly
    marker = np.linalg.solve(img.affine, RAS_AFFINE @ [0.5, 0.5, 1, 1])[:3]  # the marker's centre, in SR voxels
    assert sr[tuple(np.rint(marker).astype(int))] > 900  # ... where the marker was


def write_dicom(path, hu=None, geometry=None):
    """A CT DICOM file; geometry: optional (ImagePositionPatient, PixelSpacing, SeriesInstanceUID) of a series."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    if hu is not None:
        stored = np.rint(hu + 1024).astype(np.uint16)  # stored values, HU = 1 * stored - 1024
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = stored.tobytes()
    if geometry is not None:
        ds.ImagePositionPatient, ds.PixelSpacing, ds.SeriesInstanceUID = geometry
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).Modality == "CT"


def test_dicom_slice_in_hu(capsys, run_dir, tmp_path):
    hu = phantom_hu(16)
    write_dicom(tmp_path / "IM0001.dcm", hu)
    rc, _, err = run(capsys, "--exp", run_dir, "--input", tmp_path / "IM0001.dcm", "--scale", 2,
                     "--out", tmp_path / "out")
    assert rc == 0, err
    values, kind = read_slice(tmp_path / "out" / "IM0001.png")
    assert kind == "hu" and values.shape == (32, 32)
    assert values.mean() == pytest.approx(hu.mean(), abs=15)  # intercept applied: HU, not stored values


def test_a_dicom_series_folder_comes_back_as_one_nifti_volume(capsys, run_dir, tmp_path):
    """DICOM in, NIfTI out: slices sorted along the normal, PixelSpacing (rows, cols), LPS -> RAS."""
    nib = pytest.importorskip("nibabel")
    from pydicom.uid import generate_uid

    series, uid = tmp_path / "chest_series", generate_uid()
    series.mkdir()
    for n, z in enumerate((-50.0, -54.0, -52.0)):  # file order is not slice order
        hu = np.full((6, 8), 40.0)
        hu[0, 0] = 1000 if z == -54.0 else 40  # a marker in the lowest slice, at the first row and column
        write_dicom(series / f"IM{n:04d}", hu, ([-100.0, -120.0, z], [0.7, 0.9], uid))
    rc, _, err = run(capsys, "--exp", run_dir, "--input", series, "--scale", 2, "--out", tmp_path / "out")
    assert rc == 0, err
    img = nib.load(tmp_path / "out" / "chest_series.nii.gz")
    assert img.shape == (16, 12, 3) and img.get_data_dtype() == np.int16  # (cols, rows, slices) like dcm2niix
    np.testing.assert_allclose(img.header.get_zooms(), [0.45, 0.35, 2.0], rtol=1e-6)
    # LPS (-100, -120, -54) is RAS (100, 120, -54), moved by half the new minus the old spacing along +cols, +rows
    expected = np.diag([-0.45, -0.35, 2.0, 1.0])
    expected[:3, 3] = [100 + 0.225, 120 + 0.175, -54]
    np.testing.assert_allclose(img.affine, expected, atol=1e-5)
    sr = np.asanyarray(img.dataobj)
    assert sr[0, 0, 0] > 900 and (sr[8:, 6:, :] == 40).all() and (sr[..., 1:] == 40).all()


def test_samples_of_a_volume_give_a_std_volume_beside_the_mean(capsys, ldm_dir, fixtures_dir, tmp_path):
    nib = pytest.importorskip("nibabel")
    rc, _, err = run(capsys, "--exp", ldm_dir, "--input", fixtures_dir / "volumes" / "lung1_64x64x3.nrrd",
                     "--scale", 2, "--steps", 2, "--n_samples", 3, "--out", tmp_path / "out")
    assert rc == 0, err
    mean, std = (nib.load(tmp_path / "out" / f"lung1_64x64x3{s}.nii.gz") for s in ("", "_std"))
    assert mean.shape == std.shape == (128, 128, 3) and std.get_data_dtype() == np.float32
    np.testing.assert_allclose(std.affine, mean.affine)
    # the stand-in's noise is 0.02 model units = 41 HU; the std of 3 samples is a little below it
    assert 20 < float(np.asanyarray(std.dataobj).mean()) < 45


def test_a_volume_shows_one_progress_bar_and_runs_its_slices_in_batches(capsys, run_dir, fixtures_dir, tmp_path,
                                                                         monkeypatch):
    real, batches = Pipeline.super_resolve, []

    def counting(model, items, *args, **kwargs):
        batches.append(len(items))
        return real(model, items, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "super_resolve", counting)
    rc, _, err = run(capsys, "--exp", run_dir, "--input", fixtures_dir / "volumes" / "lung1_64x64x3.nrrd",
                     "--scale", 2, "--batch_size", 2, "--out", tmp_path / "out")
    assert rc == 0 and batches == [2, 1]
    bars = {line.split(":")[0].strip() for line in err.replace("\r", "\n").splitlines() if "slice/s" in line
            or "s/slice" in line}
    assert bars == {"lung1_64x64x3"} and "3/3" in err


def test_a_bad_volume_is_one_line_and_the_others_are_written(capsys, run_dir, fixtures_dir, tmp_path):
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(fixtures_dir / "volumes" / "lung1_64x64x3.nrrd", folder)
    (folder / "broken.nii.gz").write_bytes(b"not gzip at all")
    rc, out, err = run(capsys, "--exp", run_dir, "--input", folder, "--scale", 2, "--out", tmp_path / "out")
    assert rc == 1 and "wrote 3 slice(s) (1 volume(s))" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lung1_64x64x3.nii.gz", "sr_run.json"]
    lines = [line for line in err.splitlines() if "broken.nii.gz" in line]
    assert len(lines) == 1 and "cannot read as NIfTI" in lines[0] and "Traceback" not in err


def test_dicom_without_pixel_data_is_a_clear_error(capsys, run_dir, tmp_path):
    write_dicom(tmp_path / "report.dcm")
    rc, out, err = run(capsys, "--exp", run_dir, "--input", tmp_path / "report.dcm", "--scale", 2,
                       "--out", tmp_path / "out")
    assert rc == 1 and "wrote 0 slice" in out
    assert "report.dcm: DICOM file has no pixel data" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    ([], "give --scale S or --out_size H W"),
    (["--scale", 1], "--scale: must be > 1"),
    (["--scale", 2, "--out_size", 8, 8], "not both"),
    (["--scale", 2, "--n_samples", 0], "--n_samples"),
    (["--scale", 2, "--precision", "fp16"], "--precision"),
])
def test_bad_arguments_are_one_line(capsys, run_dir, tmp_path, argv, message):
    write_png16_hu(tmp_path / "s.png", phantom_hu(16))
    rc, _, err = run(capsys, "--exp", run_dir, "--input", tmp_path / "s.png", "--out", tmp_path / "out", *argv)
    assert rc == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_input_or_run(capsys, run_dir, tmp_path):
    rc, _, err = run(capsys, "--exp", run_dir, "--input", tmp_path / "nope", "--scale", 2, "--out", tmp_path / "o")
    assert rc == 2 and "nope: no such file or folder" in err
    write_png16_hu(tmp_path / "s.png", phantom_hu(16))
    rc, _, err = run(capsys, "--exp", tmp_path / "norun", "--input", tmp_path / "s.png", "--scale", 2,
                     "--out", tmp_path / "o")
    assert rc == 2 and "log dir not found" in err and not (tmp_path / "o").exists()


def test_the_output_folder_records_what_produced_it(capsys, run_dir, tmp_path):
    import json

    write_png16_hu(tmp_path / "in.png", phantom_hu(16))
    rc, _, _ = run(capsys, "--exp", run_dir, "--input", tmp_path / "in.png", "--scale", 2, "--seed", 7,
                   "--out", tmp_path / "out")
    record = json.loads((tmp_path / "out" / "sr_run.json").read_text())
    assert rc == 0 and record["seed"] == 7 and record["command"].startswith("python sr.py --exp")
    assert record["precision"] == "fp32"
    assert len(record["ckpt_sha256"]) == 64 and len(record["config_sha256"]) == 64 and record["written"] == 1


def test_bf16_precision_gives_nearly_the_fp32_slice(capsys, ldm_dir, tmp_path):
    write_png16_hu(tmp_path / "s.png", phantom_hu(16))
    for precision in ("fp32", "bf16"):
        rc, _, err = run(capsys, "--exp", ldm_dir, "--input", tmp_path / "s.png", "--scale", 2, "--steps", 2,
                         "--precision", precision, "--out", tmp_path / precision)
        assert rc == 0, err
    fp32, bf16 = (read_slice(tmp_path / p / "s.png")[0] for p in ("fp32", "bf16"))
    assert fp32.shape == bf16.shape == (32, 32)
    assert np.abs(fp32 - bf16).mean() < 20  # HU: the same seed, only bf16 rounding in between


def test_back_projection_writes_an_sr_consistent_with_the_input(capsys, ldm_dir, tmp_path):
    import json

    import torch

    from ldm.data.degradation import degrade
    from ldm.data.intensity import FULL_WINDOW, to_model_range

    write_png16_hu(tmp_path / "s.png", phantom_hu(16))
    lr = torch.from_numpy(to_model_range(*read_slice(tmp_path / "s.png"), FULL_WINDOW))[None, None]
    errors = {}
    for bp in (0, 20):
        rc, _, err = run(capsys, "--exp", ldm_dir, "--input", tmp_path / "s.png", "--scale", 2, "--steps", 2,
                         "--back_projection", bp, "--out", tmp_path / f"bp{bp}")
        assert rc == 0, err
        sr = torch.from_numpy(to_model_range(*read_slice(tmp_path / f"bp{bp}" / "s.png"), FULL_WINDOW))[None, None]
        errors[bp] = (degrade(sr, 16) - lr).abs().mean().item() * 4095  # HU
    # a sharp 16 px phantom (edges and texture at the LR's Nyquist) is the slowest case
    assert errors[20] < errors[0] / 10
    record = json.loads((tmp_path / "bp20" / "sr_run.json").read_text())
    assert record["back_projection"] == {"iterations": 20, "degradation": "bicubic"}
    assert record["sampling"] == {"sampler": "ddim", "steps": 2, "eta": 1.0, "tile": None,
                                  "n_samples": 1}  # defaults resolved


def test_batches_give_the_slice_by_slice_output(capsys, ldm_dir, fixtures_dir, tmp_path):
    """A volume's slices and a folder of mixed sizes, in batches: the same bytes as one at a time."""
    folder = tmp_path / "in"
    write_png16_hu(folder / "a.png", phantom_hu(16, seed=1))
    write_png16_hu(folder / "b.png", phantom_hu(16, seed=2))
    write_png16_hu(folder / "c.png", phantom_hu(12, seed=3))  # another size: a batch of its own
    write_png16_hu(folder / "d.png", phantom_hu(16, seed=4))
    volume = fixtures_dir / "volumes" / "lung1_64x64x3.nrrd"
    outputs = {}
    for batch in (1, 2, 3):
        for name, source in (("folder", folder), ("volume", volume)):
            out = tmp_path / f"{name}-b{batch}"
            rc, _, err = run(capsys, "--exp", ldm_dir, "--input", source, "--scale", 2, "--steps", 2, "--n_samples", 2,
                             "--batch_size", batch, "--out", out)
            assert rc == 0, err
            outputs[name, batch] = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix != ".json"}
    assert len(outputs["folder", 1]) == 8  # SR and std map per slice
    assert sorted(outputs["volume", 1]) == ["lung1_64x64x3.nii.gz", "lung1_64x64x3_std.nii.gz"]
    for batch in (2, 3):
        assert outputs["folder", batch] == outputs["folder", 1]
        assert outputs["volume", batch] == outputs["volume", 1]


def test_a_batch_that_runs_out_of_memory_is_retried_one_slice_at_a_time(capsys, ldm_dir, tmp_path, monkeypatch):
    import torch

    folder = tmp_path / "in"
    for i in range(3):
        write_png16_hu(folder / f"s{i}.png", phantom_hu(16, seed=i))
    common = ["--exp", ldm_dir, "--input", folder, "--scale", 2, "--steps", 2]
    assert run(capsys, *common, "--out", tmp_path / "one")[0] == 0
    real = Pipeline.super_resolve

    def small_gpu(model, items, *args, **kwargs):
        if len(items) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, items, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "super_resolve", small_gpu)
    rc, _, err = run(capsys, *common, "--batch_size", 3, "--out", tmp_path / "three")
    assert rc == 0 and "retrying them one at a time" in err
    for name in ("s0.png", "s1.png", "s2.png"):
        assert (tmp_path / "three" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_a_slice_that_does_not_fit_says_what_to_change(capsys, ldm_dir, tmp_path, monkeypatch):
    import torch

    write_png16_hu(tmp_path / "in" / "big.png", phantom_hu(16))

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(Pipeline, "super_resolve", no_memory)
    rc, _, err = run(capsys, "--exp", ldm_dir, "--input", tmp_path / "in", "--scale", 2, "--out", tmp_path / "out")
    failure = [line for line in err.splitlines() if "big" in line]
    assert rc == 1 and len(failure) == 1 and "out of memory" in failure[0] and "--tile" in failure[0]
    assert not list((tmp_path / "out").glob("*.png"))
