"""The sample writer against the committed fixture volume: no network, the download step injected."""

import io
import lzma
import plistlib
import shutil
import subprocess
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from ldm.data import sample
from ldm.data.intensity import read_slice
from ldm.data.sample import (
    Archive,
    SampleError,
    SamplePatient,
    apt_download,
    inv3_from_deb,
    nrrd_from_tar,
    prepare_sample,
)
from ldm.data.volumes import read_nrrd
from ldm.util import file_sha256

MEMBERS = {"lung1": "pkg-1.0/data/lung1_image.nrrd", "lung2": "pkg-1.0/data/lung2_image.nrrd"}


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


@pytest.fixture
def registry(tmp_path, fixtures_dir):
    """A fake registry: an archive like pyradiomics's, holding the fixture NRRD twice; counts downloads."""
    nrrd = (fixtures_dir / "volumes" / "lung1_64x64x3.nrrd").read_bytes()
    published = tmp_path / "registry" / "pkg-1.0.tar.gz"
    published.parent.mkdir()
    published.write_bytes(tar_bytes({member: nrrd for member in MEMBERS.values()}))
    downloads = []

    def download(folder):
        downloads.append(folder)
        shutil.copy(published, folder / published.name)

    archive = Archive(published.name, file_sha256(published), download)
    patients = [
        SamplePatient("chest", name, 3, archive, partial(nrrd_from_tar, member)) for name, member in MEMBERS.items()
    ]
    return patients, downloads, published


def test_writes_named_slices_from_the_archive(tmp_path, registry, fixtures_dir):
    patients, downloads, _ = registry
    out, cache = tmp_path / "CT", tmp_path / "downloads"
    report = prepare_sample(out, cache, patients=patients, log=lambda _: None)
    assert report == {"slices": {"chest_lung1": 3, "chest_lung2": 3}, "written": 6, "skipped": {}}
    names = sorted(p.name for p in (out / "chest").iterdir())
    assert names == [f"chest_{p}_s01_slice_{n:03d}.png" for p in ("lung1", "lung2") for n in (1, 2, 3)]
    volume = read_nrrd(fixtures_dir / "volumes" / "lung1_64x64x3.nrrd")
    values, kind = read_slice(out / "chest" / "chest_lung2_s01_slice_003.png")
    assert kind == "hu"
    np.testing.assert_array_equal(values, volume[2])
    assert len(downloads) == 1 and (cache / "pkg-1.0.tar.gz").is_file()
    assert [p.name for p in cache.iterdir()] == ["pkg-1.0.tar.gz"]  # no download leftovers


def test_rerun_is_idempotent_and_completes_a_half_finished_run(tmp_path, registry):
    patients, downloads, _ = registry
    out, cache = tmp_path / "CT", tmp_path / "downloads"
    prepare_sample(out, cache, patients=patients, log=lambda _: None)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    lines = []
    report = prepare_sample(out, cache, patients=patients, log=lines.append)
    assert report["written"] == 0 and lines == [f"sample CT complete: 6 slices of 2 patients in {out}; nothing to do"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps
    (out / "chest" / "chest_lung2_s01_slice_002.png").unlink()
    report = prepare_sample(out, cache, patients=patients, log=lambda _: None)
    assert report["written"] == 1 and (out / "chest" / "chest_lung2_s01_slice_002.png").is_file()
    assert len(downloads) == 1  # the cached archive was reused


def test_a_cached_file_with_the_wrong_sha_is_fetched_again(tmp_path, registry):
    patients, downloads, _ = registry
    cache = tmp_path / "downloads"
    cache.mkdir()
    (cache / "pkg-1.0.tar.gz").write_bytes(b"half a download")
    prepare_sample(tmp_path / "CT", cache, patients=patients, log=lambda _: None)
    assert len(downloads) == 1 and file_sha256(cache / "pkg-1.0.tar.gz") == patients[0].archive.sha256


def test_a_download_that_is_not_the_pinned_file_is_refused(tmp_path, registry):
    patients, _, published = registry
    archive = Archive(published.name, "0" * 64, patients[0].archive.download)
    bad = [SamplePatient("chest", "lung1", 3, archive, patients[0].read)]
    with pytest.raises(SampleError, match="pkg-1.0.tar.gz: sha256 .* is not the pinned 0000"):
        prepare_sample(tmp_path / "CT", tmp_path / "downloads", patients=bad, log=lambda _: None)
    assert not (tmp_path / "CT").exists() and not (tmp_path / "downloads" / published.name).exists()


def test_optional_patient_is_skipped_with_one_line(tmp_path, registry):
    patients, _, _ = registry

    def no_apt(folder):
        raise SampleError("apt-get not found (not a Debian/Ubuntu system)")

    head = SamplePatient("head", "cranium", 5, Archive("x.deb", "0" * 64, no_apt), inv3_from_deb, optional=True)
    lines = []
    report = prepare_sample(tmp_path / "CT", tmp_path / "dl", patients=[*patients, head], log=lines.append)
    assert report["skipped"] == {"head_cranium": "apt-get not found (not a Debian/Ubuntu system)"}
    assert "head_cranium: skipped, apt-get not found (not a Debian/Ubuntu system)" in lines
    assert set(report["slices"]) == {"chest_lung1", "chest_lung2"}
    report = prepare_sample(
        tmp_path / "CT", tmp_path / "dl", include_head=False, patients=[*patients, head], log=lines.append
    )
    assert report["skipped"] == {} and lines[-1].endswith("nothing to do")


def test_offline_is_a_one_line_error_exit_1(tmp_path, monkeypatch, capsys):
    def offline(cmd, **kwargs):
        return subprocess.CompletedProcess(
            cmd,
            1,
            "",
            "WARNING: Retrying ...\nERROR: Could not find a version "
            "that satisfies the requirement pyradiomics-bhklab==3.1.4\n",
        )

    monkeypatch.setattr(sample.subprocess, "run", offline)
    out = tmp_path / "CT"
    assert sample.main(["--out", str(out), "--cache", str(tmp_path / "dl")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("sample: error: pip download pyradiomics-bhklab==3.1.4 failed") and "Could not find" in err
    assert not out.exists()


def test_apt_download_without_apt_get(tmp_path, monkeypatch):
    monkeypatch.setattr(sample.shutil, "which", lambda name: None)
    with pytest.raises(SampleError, match="apt-get not found"):
        apt_download("invesalius-examples", tmp_path)


def test_apt_download_refreshes_lists_once_as_root(tmp_path, monkeypatch):
    calls = []

    def apt(cmd, **kwargs):
        calls.append(cmd[:2])
        ok = cmd[1] == "update" or len(calls) > 1
        return subprocess.CompletedProcess(cmd, 0 if ok else 100, "", "" if ok else "E: Unable to locate package x\n")

    monkeypatch.setattr(sample.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(sample.subprocess, "run", apt)
    monkeypatch.setattr(sample.os, "geteuid", lambda: 0)
    apt_download("x", tmp_path)
    assert calls == [["apt-get", "download"], ["apt-get", "update"], ["apt-get", "download"]]
    calls.clear()
    monkeypatch.setattr(sample.os, "geteuid", lambda: 1000)
    with pytest.raises(SampleError, match="Unable to locate package x"):
        apt_download("x", tmp_path)
    assert calls == [["apt-get", "download"]]


def ar_archive(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, payload in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(payload):<10}`\n".encode()
        out += header + payload + (b"\n" if len(payload) % 2 else b"")
    return out


def test_cranium_from_a_debian_package(tmp_path):
    matrix = (np.arange(2 * 4 * 4).reshape(2, 4, 4) - 1024).astype("<i2")
    main = {"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": [2, 4, 4]}}
    inv3 = tar_bytes({"proj/main.plist": plistlib.dumps(main), "proj/matrix.dat": matrix.tobytes()})
    data = tar_bytes({"./usr/share/doc/x/Cranium.inv3": inv3}, mode="w:xz")
    deb = tmp_path / "x.deb"
    deb.write_bytes(ar_archive({"debian-binary": b"2.0\n", "control.tar.xz": lzma.compress(b"c"), "data.tar.xz": data}))
    volume = inv3_from_deb("usr/share/doc/x/Cranium.inv3", deb)
    np.testing.assert_array_equal(volume, matrix[:, ::-1, :])
    with pytest.raises(SampleError, match="x.deb: no usr/share/doc/x/Other.inv3"):
        inv3_from_deb("usr/share/doc/x/Other.inv3", deb)
    (tmp_path / "y.deb").write_bytes(b"not ar")
    with pytest.raises(SampleError, match="y.deb: not an ar archive"):
        inv3_from_deb("usr/share/doc/x/Cranium.inv3", tmp_path / "y.deb")


def test_the_pinned_sample_is_described_consistently():
    names = [(p.patient_id, p.n_slices, p.optional) for p in sample.SAMPLE_PATIENTS]
    assert names == [("chest_lung1", 48, False), ("chest_lung2", 61, False), ("head_cranium", 108, True)]
    assert all(len(p.archive.sha256) == 64 for p in sample.SAMPLE_PATIENTS)


def test_pip_download_writes_into_a_relative_cache_folder(tmp_path, monkeypatch):
    """The client runs inside the cache folder, so the destination must not be relative to it."""
    from ldm.data import sample

    calls = []
    monkeypatch.setattr(sample, "_run", lambda cmd, cwd, what: calls.append((cmd, cwd)))
    monkeypatch.chdir(tmp_path)
    sample.pip_download("pyradiomics-bhklab==3.1.4", Path("data/downloads"))
    cmd, cwd = calls[0]
    dest = Path(cmd[cmd.index("-d") + 1])
    assert dest.is_absolute() and dest == (tmp_path / "data" / "downloads").resolve()
