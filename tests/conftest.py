"""Shared fixtures: a small real CT tree and split lists for it (no network, a few KB per test).

tests/fixtures/CT holds 12 real slices, 64 x 64, 16-bit HU+1024, named like the sample:
    chest/chest_lung1_s01_slice_{011,020,030,039}.png    patient chest_lung1
    chest/chest_lung2_s01_slice_{013,025,038,050}.png    patient chest_lung2
    head/head_cranium_s01_slice_{023,044,066,087}.png    patient head_cranium
tests/fixtures/volumes/lung1_64x64x3.nrrd is a gzip NRRD of three lung1 slices.
tests/fixtures/make_fixtures.py rebuilds both from the sample archives.

Typical use:
    def test_something(ct_splits):            # root + train/val/test lists, ready for CTDataModule
        dm = CTDataModule(root=str(ct_splits.root), train_list=str(ct_splits.train), ...)
    def test_other(ct_tree, write_splits):    # choose the assignment yourself
        lists = write_splits(ct_tree, {"test": ["chest_lung2"]})   # val.txt empty, rest train
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from ldm.data.patients import SPLITS, find_slices, patient_id

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    """The committed fixture folder (read-only: copy before writing)."""
    return FIXTURES


@pytest.fixture
def ct_tree(tmp_path: Path) -> Path:
    """A copy of the fixture slices at tmp_path/CT (class folders chest/, head/); returns the root."""
    root = tmp_path / "CT"
    shutil.copytree(FIXTURES / "CT", root)
    return root


@pytest.fixture
def write_splits() -> Callable[..., dict[str, Path]]:
    """Returns write(root, assignment, out=None) -> {"train"|"val"|"test": list file}.

    assignment maps "val"/"test" to patient ids; every other patient under root goes to train.
    Lists are written beside root (or into out), paths relative to root, like split.py's.
    """

    def write(root: Path, assignment: Mapping[str, Sequence[str]], out: Path | None = None) -> dict[str, Path]:
        out = Path(out) if out is not None else Path(root).parent
        split_of = {p: s for s, patients in assignment.items() for p in patients}
        lists: dict[str, list[str]] = {s: [] for s in SPLITS}
        for name in find_slices(Path(root)):
            lists[split_of.get(patient_id(name), "train")].append(name)
        paths = {}
        for split, names in lists.items():
            paths[split] = out / f"{split}.txt"
            paths[split].write_text("".join(f"{n}\n" for n in names))
        return paths

    return write


@pytest.fixture
def ct_splits(ct_tree: Path, write_splits: Callable[..., dict[str, Path]]) -> SimpleNamespace:
    """ct_tree plus lists: train chest_lung1 (4 slices), val head_cranium (4), test chest_lung2 (4).

    Attributes: root, train, val, test (Paths).
    """
    lists = write_splits(ct_tree, {"val": ["head_cranium"], "test": ["chest_lung2"]})
    return SimpleNamespace(root=ct_tree, **lists)
