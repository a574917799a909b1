"""split.py and ldm.data.patients: patient-wise, stratified, deterministic, and refusing bad input whole."""

import json
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import split
from ldm.data.patients import (
    SPLITS,
    PatientError,
    class_of,
    find_slices,
    patient_id,
    split_patients,
)


def touch(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def read_lists(out):
    return {s: (out / f"{s}.txt").read_text().splitlines() for s in SPLITS}


def tree(n_patients: int, cls: str = "covid", series: int = 2, slices: int = 3) -> list[str]:
    return [
        f"{cls}/{cls}_p{p}_ns00{s}i0000{s}_slice_{n:03d}.png"
        for p in range(n_patients)
        for s in range(1, series + 1)
        for n in range(1, slices + 1)
    ]


# ---- patient ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,patient",
    [
        ("covid_p16_ns002i00001_slice_001.png", "covid_p16"),
        ("covid_p16_ns003i00002_slice_004.png", "covid_p16"),
        ("covid/covid_p16_ns003i00002_slice_004.png", "covid_p16"),
        ("normal_83_ns1_slice_120.PNG", "normal_83"),
        ("chest/chest_lung1_s01_slice_001.png", "chest_lung1"),
        ("head_cranium_slice_7.png", "head_cranium"),
        ("a/b/normal_83_ser_with_underscores_slice_001.png", "normal_83"),
    ],
)
def test_patient_is_class_prefix_plus_patient_token(name, patient):
    assert patient_id(name) == patient


@pytest.mark.parametrize("name", ["covid_p16.png", "p16_slice_001.png", "covid_p16_ns1_slice_x.png", "notes.txt"])
def test_unparseable_names_are_refused_by_name(name):
    with pytest.raises(PatientError, match=re.escape(name)):
        patient_id(name)


def test_custom_pattern_named_or_first_group():
    assert patient_id("scans/PAT-0042/img_0001.png", r"(?P<patient>PAT-\d+)/") == "PAT-0042"
    assert patient_id("scans/PAT-0042/img_0001.png", r"(PAT-\d+)/") == "PAT-0042"
    with pytest.raises(PatientError, match="needs a group"):
        patient_id("x.png", r"PAT")
    with pytest.raises(PatientError, match="not a valid regex"):
        patient_id("x.png", r"(PAT")


def test_class_is_the_first_folder():
    assert class_of("covid/covid_p1_s_slice_001.png") == "covid"
    assert class_of("covid/sub/covid_p1_s_slice_001.png") == "covid"
    assert class_of("covid_p1_s_slice_001.png") == "."


# ---- splitting -----------------------------------------------------------------------------------


def patients_by_split(result, pattern=None):
    return {s: {patient_id(f, pattern) for f in result.files[s]} for s in SPLITS}


def assert_no_leak(result, names, pattern=None):
    by_split = patients_by_split(result, pattern)
    assert not (
        by_split["train"] & by_split["val"]
        or by_split["train"] & by_split["test"]
        or by_split["val"] & by_split["test"]
    )
    listed = [f for s in SPLITS for f in result.files[s]]
    assert sorted(listed) == sorted(set(names))  # every slice exactly once
    assert all(result.files[s] == sorted(result.files[s]) for s in SPLITS)


name_parts = st.tuples(
    st.sampled_from(["covid", "normal", "chest", "head-neck"]),
    st.from_regex(r"[a-z0-9]{1,4}", fullmatch=True),
    st.from_regex(r"[a-z0-9_]{0,8}", fullmatch=True),
    st.integers(1, 400),
)


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(name_parts, min_size=1, max_size=60),
    val=st.floats(0, 0.45),
    test=st.floats(0, 0.45),
    seed=st.integers(0, 2**31),
    folders=st.booleans(),
)
def test_random_names_never_leak_or_crash(parts, val, test, seed, folders):
    names = []
    for cls, patient, series, number in parts:
        name = f"{cls}_{patient}_{series + '_' if series else ''}slice_{number:03d}.png"
        names.append(f"{cls}/{name}" if folders else name)
    result = split_patients(names, val, test, seed)
    assert_no_leak(result, names)
    shuffled = list(names)
    random.Random(seed).shuffle(shuffled)
    assert split_patients(shuffled, val, test, seed).files == result.files


@settings(max_examples=100, deadline=None)
@given(
    files=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]), st.text("xyz-_ 0", max_size=6), st.integers(0, 9), st.text("xyz_-", max_size=6)
        ),
        min_size=1,
        max_size=40,
    ),
    seed=st.integers(0, 1000),
)
def test_random_names_with_a_pattern_never_leak(files, seed):
    names = [f"{cls}/{pre}pid{pid}{post}.png" for cls, pre, pid, post in files]
    pattern = r"pid(\d)"
    result = split_patients(names, 0.2, 0.2, seed, pattern=pattern)
    assert_no_leak(result, names, pattern)


def test_series_of_one_patient_stay_together():
    names = tree(12, series=3)
    result = split_patients(names, 0.2, 0.2, seed=1)
    for s in SPLITS:
        for patient in patients_by_split(result)[s]:
            assert all(f in result.files[s] for f in names if f"/{patient}_" in f)


@pytest.mark.parametrize("n", [3, 4, 7, 20])
def test_every_split_non_empty_with_enough_patients(n):
    result = split_patients(tree(n) + tree(n, cls="normal"), 0.1, 0.15, seed=3)
    for s in SPLITS:
        assert {result.class_of[p] for p in result.patients(s)} == {"covid", "normal"}  # stratified


def test_ratios_are_honoured_per_class():
    result = split_patients(tree(40) + tree(20, cls="normal"), 0.1, 0.25, seed=0)
    counts = {(c, s): n for c, s, n, _ in result.table()}
    assert counts == {
        ("covid", "train"): 26,
        ("covid", "val"): 4,
        ("covid", "test"): 10,
        ("normal", "train"): 13,
        ("normal", "val"): 2,
        ("normal", "test"): 5,
    }


def test_two_patients_give_one_test_one_train_and_no_val():
    result = split_patients(tree(2), 0.1, 0.15, seed=0)
    assert [len(result.patients(s)) for s in SPLITS] == [1, 0, 1]
    assert split_patients(tree(1), 0.1, 0.15, seed=0).patients("train") == ["covid_p0"]


def test_zero_ratios_leave_those_splits_empty():
    result = split_patients(tree(10), 0.0, 0.0, seed=0)
    assert len(result.patients("train")) == 10 and not result.files["val"] and not result.files["test"]


def test_forced_test_patients():
    result = split_patients(tree(10), 0.1, 0.15, seed=0, test_patients=["covid_p3", "covid_p7"])
    assert {"covid_p3", "covid_p7"} <= set(result.patients("test"))
    assert len(result.patients("test")) == 2  # they count toward the class's test share
    with pytest.raises(PatientError, match="unknown patient.*covid_p99"):
        split_patients(tree(10), 0.1, 0.15, seed=0, test_patients=["covid_p99"])
    with pytest.raises(PatientError, match="no training patients"):
        split_patients(tree(2), 0.1, 0.15, seed=0, test_patients=["covid_p0", "covid_p1"])


def test_seed_changes_the_split_and_is_stable():
    a = split_patients(tree(30), 0.1, 0.2, seed=1)
    assert a.files == split_patients(tree(30)[::-1], 0.1, 0.2, seed=1).files
    assert any(a.files != split_patients(tree(30), 0.1, 0.2, seed=s).files for s in range(2, 6))


# ---- the CLI -------------------------------------------------------------------------------------


def test_cli_on_the_fixture_tree(ct_tree, tmp_path, capsys):
    out = tmp_path / "lists"
    assert split.main(["--root", str(ct_tree), "--out", str(out), "--test_patients", "chest_lung2"]) == 0
    lists = read_lists(out)
    assert lists["test"] == [f"chest/chest_lung2_s01_slice_{n}.png" for n in ("013", "025", "038", "050")]
    assert lists["val"] == [] and (out / "val.txt").read_text() == ""
    assert len(lists["train"]) == 8 and all("lung1" in f or "cranium" in f for f in lists["train"])
    printed = capsys.readouterr().out
    assert re.search(r"chest\s+test\s+1\s+4", printed) and re.search(r"all\s+train\s+2\s+8", printed)
    assert "val.txt is empty" in printed and "monitor_from_train" in printed
    assert all((ct_tree / f).is_file() for f in lists["train"] + lists["test"])
    record = json.loads((out / "split.json").read_text())  # what produced the lists
    assert record["seed"] == 23 and "--test_patients chest_lung2" in record["command"]
    assert record["patients"]["test"] == ["chest_lung2"] and record["slices"] == {"train": 8, "val": 0, "test": 4}


def test_cli_is_deterministic_whatever_the_creation_order(tmp_path):
    names = tree(9, series=2) + tree(6, cls="normal")
    for order, seed_of_order in (("a", 1), ("b", 2)):
        shuffled = list(names)
        random.Random(seed_of_order).shuffle(shuffled)
        touch(tmp_path / order / "CT", shuffled)
        assert split.main(["--root", str(tmp_path / order / "CT"), "--out", str(tmp_path / order)]) == 0
    assert read_lists(tmp_path / "a") == read_lists(tmp_path / "b")


def test_cli_skips_hidden_staging_folders_and_other_files(tmp_path):
    touch(
        tmp_path / "CT",
        tree(3) + ["covid/.covid_p9_s.abc/covid_p9_s_slice_001.png", "covid/notes.txt", "covid/.DS_Store"],
    )
    assert split.main(["--root", str(tmp_path / "CT"), "--out", str(tmp_path)]) == 0
    assert not any("p9" in f for f in sum(read_lists(tmp_path).values(), []))
    assert find_slices(tmp_path / "CT") == sorted(tree(3))


def test_cli_pattern(tmp_path):
    touch(tmp_path / "CT", [f"ct/PAT-{p}/img_{n}.png" for p in range(5) for n in range(3)])
    args = ["--root", str(tmp_path / "CT"), "--out", str(tmp_path), "--pattern", r"(?P<patient>PAT-\d+)/"]
    assert split.main(args) == 0
    lists = read_lists(tmp_path)
    assert [len(lists[s]) for s in SPLITS] == [9, 3, 3]


def error_case(tmp_path, capsys, args, code=1):
    out = tmp_path / "lists"
    if code == 2:
        with pytest.raises(SystemExit) as exit_info:
            split.main([*args, "--out", str(out)])
        assert exit_info.value.code == 2
    else:
        assert split.main([*args, "--out", str(out)]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert not out.exists() or not any(out.iterdir())  # nothing written
    return err[-1]


def test_unparseable_files_are_listed_and_nothing_is_written(tmp_path, capsys):
    touch(tmp_path / "CT", tree(3) + [f"covid/scan{n}.png" for n in range(5)])
    err = error_case(tmp_path, capsys, ["--root", str(tmp_path / "CT")])
    assert err.startswith("split.py: error: 5 slice file(s) have no patient id")
    assert "covid/scan0.png, covid/scan1.png, covid/scan2.png, ..." in err and "--pattern" in err


def test_missing_or_empty_root(tmp_path, capsys):
    err = error_case(tmp_path, capsys, ["--root", str(tmp_path / "nowhere")])
    assert "nowhere: no such folder" in err
    (tmp_path / "empty").mkdir()
    err = error_case(tmp_path, capsys, ["--root", str(tmp_path / "empty")])
    assert "empty: no .png slices found" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--val", "-0.1"], "--val -0.1: expected a fraction in [0, 1)"),
        (["--test", "1.0"], "--test 1.0: expected a fraction in [0, 1)"),
        (["--val", "0.5", "--test", "0.5"], "leaves no training patients"),
    ],
)
def test_bad_ratios_exit_2(ct_tree, tmp_path, capsys, args, message):
    err = error_case(tmp_path, capsys, ["--root", str(ct_tree), *args], code=2)
    assert message in err


def test_unknown_test_patient_and_bad_pattern(ct_tree, tmp_path, capsys):
    err = error_case(tmp_path, capsys, ["--root", str(ct_tree), "--test_patients", "chest_lung2", "chest_lung7"])
    assert "unknown patient(s) chest_lung7" in err and "known: chest_lung1, chest_lung2, head_cranium" in err
    err = error_case(tmp_path, capsys, ["--root", str(ct_tree), "--pattern", "(unclosed"])
    assert "--pattern '(unclosed': not a valid regex" in err
