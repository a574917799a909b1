"""Patient ids from slice file names, and patient-wise splits stratified by class folder.

A patient is the class prefix plus the patient token: `covid_p16_ns002i00001_slice_001.png` and
`covid_p16_ns003i00002_slice_004.png` both belong to `covid_p16`. Everything before `_slice_`
is the series, not the patient: splitting by it puts one patient's series in different splits
(the reference code's leak). Other naming schemes pass a regex whose group `patient` (or first
group) names the patient; it is searched in the slice path relative to the root, so a folder
per patient (`(?P<patient>[^/]+)/[^/]+$`) works too.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ldm.data.intensity import SLICE_SUFFIXES

SPLITS = ("train", "val", "test")
# <class>_<patient>[_<series>]_slice_<N>.png, searched in the relative path
DEFAULT_PATTERN = r"(?:^|/)(?P<patient>[^_/]+_[^_/]+)_(?:[^/]*_)?slice_\d+\.png$"
ROOT_CLASS = "."  # class of slices lying directly in the root


class PatientError(ValueError):
    """Slice names, the pattern or the split options do not allow a patient-wise split."""


def compile_pattern(pattern: str | re.Pattern[str] | None = None) -> re.Pattern[str]:
    """The patient regex; must have a group `patient` or at least one group."""
    if isinstance(pattern, re.Pattern):
        compiled = pattern
    elif pattern is None:
        compiled = re.compile(DEFAULT_PATTERN, re.IGNORECASE)
    else:
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            raise PatientError(f"--pattern '{pattern}': not a valid regex ({err})") from err
    if compiled.groups == 0:
        raise PatientError(f"--pattern '{compiled.pattern}': needs a group (?P<patient>...) naming the patient")
    return compiled


def patient_id(name: str, pattern: str | re.Pattern[str] | None = None) -> str:
    """Patient of a slice path (relative to the root, '/' separators) or a bare file name."""
    compiled = compile_pattern(pattern)
    match = compiled.search(name)
    group = "patient" if "patient" in compiled.groupindex else 1
    if match is None or not match.group(group):
        raise PatientError(f"{name}: no patient id matching '{compiled.pattern}'")
    return match.group(group)


def class_of(name: str) -> str:
    """The first directory level under the root (the class folder), or ROOT_CLASS."""
    parts = name.split("/")
    return parts[0] if len(parts) > 1 else ROOT_CLASS


def find_slices(root: Path) -> list[str]:
    """Slice paths relative to root, '/'-separated and sorted; hidden files and folders are skipped
    (conversion stages its output in hidden folders)."""
    names = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.suffix.lower() in SLICE_SUFFIXES and not any(p.startswith(".") for p in rel.parts):
            if path.is_file():
                names.append(rel.as_posix())
    return sorted(names)


@dataclass
class PatientSplit:
    """Which split each patient went to, and the slice lists that follow from it."""

    split_of: dict[str, str]  # patient -> split
    class_of: dict[str, str]  # patient -> class folder it is stratified in
    files: dict[str, list[str]] = field(default_factory=dict)  # split -> sorted slice paths
    slices_of: dict[str, int] = field(default_factory=dict)  # patient -> slice count

    def patients(self, split: str, cls: str | None = None) -> list[str]:
        return sorted(p for p, s in self.split_of.items() if s == split and (cls is None or self.class_of[p] == cls))

    def table(self) -> list[tuple[str, str, int, int]]:
        """(class, split, patients, slices) for every class and split, in order."""
        rows = []
        for cls in sorted(set(self.class_of.values())):
            for split in SPLITS:
                members = self.patients(split, cls)
                rows.append((cls, split, len(members), sum(self.slices_of[p] for p in members)))
        return rows


def _split_counts(n: int, n_forced: int, val: float, test: float) -> tuple[int, int]:
    """(val, test) patient counts for one class: rounded ratios, at least one per split whose
    ratio is > 0 while train keeps one; test is served before val when patients are few."""
    n_test = max(math.floor(n * test + 0.5), 1 if test > 0 else 0, n_forced)
    n_val = max(math.floor(n * val + 0.5), 1 if val > 0 else 0)
    n_test = min(n_test, max(n - 1, n_forced))
    n_val = max(0, min(n_val, n - 1 - n_test))
    return n_val, n_test


def check_ratios(val: float, test: float) -> None:
    for name, ratio in (("--val", val), ("--test", test)):
        if not 0.0 <= ratio < 1.0:
            raise PatientError(f"{name} {ratio}: expected a fraction in [0, 1)")
    if val + test >= 1.0:
        raise PatientError(f"--val {val} + --test {test} >= 1 leaves no training patients")


def split_patients(
    names: Iterable[str],
    val: float = 0.1,
    test: float = 0.15,
    seed: int = 23,
    pattern: str | re.Pattern[str] | None = None,
    test_patients: Sequence[str] = (),
) -> PatientSplit:
    """Patient-wise split of slice paths (relative to the root), stratified by class folder.

    Deterministic for a seed whatever the order of `names`: patients are sorted, then shuffled
    per class by random.Random(f"{seed}/{class}"). `test_patients` go to test first. A patient
    found in several class folders is stratified in the first (sorted) of them and kept whole.
    """
    check_ratios(val, test)
    compiled = compile_pattern(pattern)
    names = sorted(set(names))
    if not names:
        raise PatientError("no slices to split")
    patient_files: dict[str, list[str]] = {}
    unparsed = []
    for name in names:
        try:
            patient_files.setdefault(patient_id(name, compiled), []).append(name)
        except PatientError:
            unparsed.append(name)
    if unparsed:
        shown = ", ".join(unparsed[:3]) + (", ..." if len(unparsed) > 3 else "")
        raise PatientError(
            f"{len(unparsed)} slice file(s) have no patient id matching '{compiled.pattern}': {shown} "
            "(name slices <class>_<patient>_<series>_slice_<NNN>.png or pass --pattern)"
        )
    unknown = sorted(set(test_patients) - set(patient_files))
    if unknown:
        known = sorted(patient_files)
        raise PatientError(
            f"--test_patients: unknown patient(s) {', '.join(unknown)} "
            f"(known: {', '.join(known[:8])}{', ...' if len(known) > 8 else ''})"
        )
    classes = {p: min(class_of(f) for f in files) for p, files in patient_files.items()}
    forced_set = set(test_patients)
    split_of: dict[str, str] = {}
    for cls in sorted(set(classes.values())):
        members = sorted(p for p, c in classes.items() if c == cls)
        forced = [p for p in members if p in forced_set]
        rest = [p for p in members if p not in forced_set]
        random.Random(f"{seed}/{cls}").shuffle(rest)
        n_val, n_test = _split_counts(len(members), len(forced), val, test)
        for index, patient in enumerate(forced + rest):
            split_of[patient] = "test" if index < n_test else "val" if index < n_test + n_val else "train"
    result = PatientSplit(split_of, classes, slices_of={p: len(f) for p, f in patient_files.items()})
    result.files = {s: sorted(f for p in result.patients(s) for f in patient_files[p]) for s in SPLITS}
    if not result.files["train"]:
        raise PatientError("no training patients left (every patient is in --test_patients?)")
    # re-derive the patients from the written lists: the guarantee split.py exists for
    found = {s: {patient_id(f, compiled) for f in result.files[s]} for s in SPLITS}
    if found["train"] & found["val"] or found["train"] & found["test"] or found["val"] & found["test"]:
        raise AssertionError("a patient leaked across splits")
    return result
