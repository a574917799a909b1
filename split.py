"""Patient-wise split of the CT slices under --root into train/val/test lists.

    python split.py [--root data/CT] [--out data] [--val 0.1] [--test 0.15] [--seed 23]
                    [--pattern REGEX] [--test_patients ID [ID ...]]

Writes <out>/train.txt, val.txt, test.txt: one slice path per line, relative to --root, sorted.
No patient is in two lists (see ldm/data/patients.py for what a patient is); the split is
stratified by class folder and the same for a seed whatever order the files are listed in.
The three files are written only once everything has been checked, each atomically.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ldm.data.patients import SPLITS, PatientError, PatientSplit, check_ratios, find_slices, split_patients
from ldm.util import run_record, write_json_atomic, write_text_atomic


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="split.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("data/CT"), help="slice root, class folders below")
    parser.add_argument("--out", type=Path, default=Path("data"), help="folder for train/val/test.txt")
    parser.add_argument("--val", type=float, default=0.1, help="fraction of patients per class for validation")
    parser.add_argument("--test", type=float, default=0.15, help="fraction of patients per class for test")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument(
        "--pattern",
        help="regex whose group 'patient' (or first group) names the patient, searched in the path relative to --root",
    )
    parser.add_argument(
        "--test_patients", nargs="+", default=[], metavar="ID", help="patients forced into test, e.g. chest_lung2"
    )
    args = parser.parse_args(argv)
    try:
        check_ratios(args.val, args.test)
    except PatientError as err:
        parser.error(str(err))
    return args


def format_table(split: PatientSplit) -> str:
    rows = [("class", "split", "patients", "slices")]
    rows += [(c, s, str(p), str(n)) for c, s, p, n in split.table()]
    rows += [("all", s, str(len(split.patients(s))), str(len(split.files[s]))) for s in SPLITS]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        if not args.root.is_dir():
            raise PatientError(f"--root {args.root}: no such folder (python -m ldm.data.sample writes one)")
        names = find_slices(args.root)
        if not names:
            raise PatientError(f"--root {args.root}: no .png slices found")
        split = split_patients(names, args.val, args.test, args.seed, args.pattern, args.test_patients)
    except PatientError as err:
        print(f"split.py: error: {err}", file=sys.stderr)
        return 1
    for name in SPLITS:
        lines = split.files[name]
        write_text_atomic(args.out / f"{name}.txt", "".join(f"{line}\n" for line in lines))
    write_json_atomic(args.out / "split.json", run_record(
        "split.py", argv, seed=args.seed, root=str(args.root), val=args.val, test=args.test,
        pattern=args.pattern, patients={name: split.patients(name) for name in SPLITS},
        slices={name: len(split.files[name]) for name in SPLITS}))
    print(format_table(split))
    for name in SPLITS:
        print(f"wrote {args.out / f'{name}.txt'}: {len(split.files[name])} slices")
    if not split.files["val"] and args.val > 0:
        print(
            f"note: {args.out / 'val.txt'} is empty (too few patients for validation); "
            "the data module can monitor on training slices (monitor_from_train)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
