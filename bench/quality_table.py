"""The quality table of BENCHMARKS.md from eval_sr.py outputs, and issue 8's quality goals checked on it.

    python bench/quality_table.py bench/out/eval            # the folders bench/gpu_measure.sh writes
    python bench/quality_table.py bench/out/eval --json bench/out/quality.json

Reads every <dir>/summary.json (or a single-scale <dir>/metrics.json) under the given folders.
A row is one method at one sample count: bicubic and Lanczos, the regressions (LIIF, LIIF + LR
skip, the first stage alone) and each LDM run with 1 sample or the mean of K. Run names are those
bench/gpu_measure.sh gives (s1, liif, liif-skip, s2, s3) and are labelled accordingly; other names
are printed as they are. A cell is PSNR / SSIM / MAE HU / soft-tissue PSNR / LR-consistency PSNR.

The goals (issue 8), each printed as met / missed with the margin, or "not measured" when its
rows or scales are missing:
  - LIIF + LR skip reaches the reference column (7 minutes on one H100) at x2, x4, x8 in PSNR,
    SSIM, MAE and LR-consistency; the plain LIIF at least the mean PSNR of the two plain runs;
  - both LIIFs beat bicubic in every metric (PSNR, SSIM, MAE, soft-tissue PSNR, LR-consistency)
    at every scale, strictly;
  - the LDM's mean of K >= the best LIIF's PSNR at every scale, one sample within 0.5 dB; its MAE
    at most the lowest LIIF MAE; its LR-consistency >= 60 dB at every scale;
  - stage 3 (s3) improves on stage 2 (s2) in PSNR at every scale, by more than 0.05 dB.
Runs evaluated with eval_sr.py --back_projection get rows of their own ("+ back-projection"),
compared with back-projected LIIF rows where those exist, and with bicubic + back-projection (not
only the projection's doing).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LABELS = {"bicubic": "bicubic", "lanczos": "Lanczos", "liif": "LIIF (EDSR)", "liif-skip": "LIIF + LR skip",
          "s1": "first stage alone", "s2": "LDM", "s3": "LDM after stage 3"}
ORDER = list(LABELS)
# issue 8: EDSR-LIIF with the LR skip, 7 minutes on one H100, test patient lung2
# (PSNR, SSIM, MAE HU, LR-consistency PSNR)
REFERENCE_SKIP = {2.0: (60.48, 0.999, 2.8, 73.8), 4.0: (47.74, 0.991, 9.8, 66.6), 8.0: (39.37, 0.959, 23.1, 59.8)}
REFERENCE_DECIMALS = {"psnr": 2, "ssim": 3, "mae_hu": 1, "lr_psnr": 1}
# the plain LIIF's goal: at least the mean PSNR of the two plain reference runs (seeds 0 and 1)
REFERENCE_PLAIN_MEAN = {2.0: (57.17 + 54.65) / 2, 4.0: (46.20 + 45.96) / 2, 8.0: (38.23 + 38.14) / 2}
LR_CONSISTENCY_DB = 60.0
BP = "+bp"  # suffix of a method evaluated with eval_sr.py --back_projection
ONE_SAMPLE_DB = 0.5
MEASURABLE_DB = 0.05  # "measurably improves": more than rounding and sampling noise of one evaluation

Table = dict[tuple[str, int], dict[float, dict[str, float]]]  # (method, samples) -> scale -> metrics


def read_results(folders: Sequence[Path]) -> Table:
    """(method, n_samples) -> {scale: metrics} from every summary.json / metrics.json found."""
    table: Table = {}
    for folder in folders:
        summaries = sorted(folder.rglob("summary.json"))
        covered = {p.parent for p in summaries}
        # a multi-scale run's x<S>/metrics.json repeat its summary; a single-scale run has only metrics.json
        singles = [p for p in sorted(folder.rglob("metrics.json")) if not {p.parent, p.parent.parent} & covered]
        for path in summaries + singles:
            doc = json.loads(path.read_text())
            scales = doc["scales"].values() if "scales" in doc else [doc]
            for scale in scales:
                ratio = float(scale["scale_ratio"])
                for method, metrics in scale["methods"].items():
                    info = doc["method_info"].get(method, {})
                    samples = 1
                    if info.get("kind") == "ldm":  # eval_sr names a K > 1 run's rows "<run> (1 sample)" / "(mean of K)"
                        samples = int(info.get("sampling", {}).get("n_samples") or doc.get("n_samples") or 1)
                        method = re.sub(r" \((1 sample|mean of \d+)\)$", "", method)
                    projected = info.get("back_projection") and not method.endswith(BP)  # eval_sr's bicubic+bp
                    name = method + BP if projected else method
                    table.setdefault((name, samples), {})[ratio] = metrics
    return table


def label(method: str, samples: int) -> str:
    base = method.removesuffix(BP)
    name = LABELS.get(base, base)
    if base in ("s2", "s3"):
        name += f", {'1 sample' if samples == 1 else f'mean of {samples}'}"
    return name + (" + back-projection" if method.endswith(BP) else "")


def cell(metrics: dict[str, float] | None) -> str:
    if metrics is None:
        return ""
    soft = metrics.get("psnr_soft")
    return (f"{metrics['psnr']:.2f} / {metrics['ssim']:.3f} / {metrics['mae_hu']:.1f} / "
            f"{'-' if soft is None else f'{soft:.2f}'} / {metrics['lr_psnr']:.1f}")


def markdown(table: Table) -> str:
    scales = sorted({s for by_scale in table.values() for s in by_scale})
    rank = {name: i for i, name in enumerate(ORDER)}
    keys = sorted(table, key=lambda k: (k[0].endswith(BP), rank.get(k[0].removesuffix(BP), len(ORDER)), k[0], k[1]))
    lines = ["| method | " + " | ".join(f"x{s:g}" for s in scales) + " |", "|---" * (len(scales) + 1) + "|"]
    lines += [f"| {label(*key)} | " + " | ".join(cell(table[key].get(s)) for s in scales) + " |" for key in keys]
    return "\n".join(lines)


def _goal(name: str, margin: float | None, unit: str = "dB", strict: bool = False) -> dict[str, Any]:
    """margin >= 0 meets the goal (> 0 for `strict` ones: beating and improving); None: not measured."""
    met = None if margin is None else (margin > 0 if strict else margin >= 0)
    return {"goal": name, "met": met, "margin": margin, "unit": unit}


# how each metric is better, and its unit in a margin: SSIM in hundredths so margins compare
METRIC_SIGN = {"psnr": (1.0, "dB"), "ssim": (100.0, "SSIM/100"), "mae_hu": (-1.0, "HU"), "psnr_soft": (1.0, "dB"),
               "lr_psnr": (1.0, "dB")}


def _worst_margin(m: dict[str, float], ref: dict[str, float]) -> tuple[float, str]:
    """The smallest advantage of m over ref across the table's metrics (positive: m better in all)."""
    margins = [(sign * (m[k] - ref[k]), f"{unit} ({k})") for k, (sign, unit) in METRIC_SIGN.items()
               if k in m and k in ref]
    return min(margins)


def goals(table: Table) -> list[dict[str, Any]]:
    """Issue 8's quality goals, each with its margin; a goal whose rows or scales are missing is
    listed with met = None ("not measured"), so a partial run cannot look complete."""
    out: list[dict[str, Any]] = []
    scales = sorted({s for by_scale in table.values() for s in by_scale})
    bicubic, bicubic_bp = table.get(("bicubic", 1), {}), table.get(("bicubic" + BP, 1), {})
    skip, plain = table.get(("liif-skip", 1), {}), table.get(("liif", 1), {})

    for scale, ref in REFERENCE_SKIP.items():  # the reference column, metric by metric
        m = skip.get(scale)
        for key, bound in zip(("psnr", "ssim", "mae_hu", "lr_psnr"), ref, strict=True):
            sign, unit = METRIC_SIGN[key]
            # compared at the precision the reference was printed with (0.9986 SSIM reads 0.999)
            value = None if m is None else round(m[key], REFERENCE_DECIMALS[key])
            margin = None if value is None else round((value - bound) * (-1.0 if sign < 0 else 1.0), 6)
            relation = "<=" if sign < 0 else ">="
            out.append(_goal(f"LIIF + LR skip {key} {relation} reference {bound:g} at x{scale:g}", margin,
                             "HU" if key == "mae_hu" else ("SSIM" if key == "ssim" else "dB")))
    for scale, bound in REFERENCE_PLAIN_MEAN.items():
        m = plain.get(scale)
        out.append(_goal(f"LIIF (no skip) PSNR >= mean of the two reference runs {bound:g} dB at x{scale:g}",
                         None if m is None else m["psnr"] - bound))
    for key, rows in (("liif", plain), ("liif-skip", skip)):  # the LIIF baseline beats bicubic in every metric
        for scale in scales:
            if scale in rows and scale in bicubic:
                margin, unit = _worst_margin(rows[scale], bicubic[scale])
                out.append(_goal(f"{label(key, 1)} beats bicubic in every metric at x{scale:g}", margin,
                                 f"worst: {unit}", strict=True))
            else:
                out.append(_goal(f"{label(key, 1)} beats bicubic in every metric at x{scale:g}", None))

    ldm_keys = sorted(k for k in table if k[0].removesuffix(BP) in ("s2", "s3")) or [("s2", 8), ("s2", 1)]
    for method, samples in ldm_keys:
        by_scale = table.get((method, samples), {})
        suffix = BP if method.endswith(BP) else ""  # like against like: back-projected LIIFs for a projected LDM
        liifs = [table[k] for k in ((f"liif{suffix}", 1), (f"liif-skip{suffix}", 1)) if k in table]
        name = label(method, samples)
        slack = 0.0 if samples > 1 else ONE_SAMPLE_DB
        for scale in scales:
            m = by_scale.get(scale)
            at_scale = [run[scale] for run in liifs if scale in run]
            best_psnr = max((r["psnr"] for r in at_scale), default=None)
            best_mae = min((r["mae_hu"] for r in at_scale), default=None)
            ok = m is not None and best_psnr is not None
            out.append(_goal(f"{name} PSNR >= best LIIF - {slack:g} dB at x{scale:g}",
                             m["psnr"] - best_psnr + slack if ok else None))
            out.append(_goal(f"{name} MAE <= the lowest LIIF MAE at x{scale:g}",
                             best_mae - m["mae_hu"] if ok else None, "HU"))
            out.append(_goal(f"{name} LR-consistency >= {LR_CONSISTENCY_DB:g} dB at x{scale:g}",
                             None if m is None else m["lr_psnr"] - LR_CONSISTENCY_DB))
            if suffix and m is not None and scale in bicubic_bp:  # not only the projection's doing
                out.append(_goal(f"{name} beats bicubic + back-projection in PSNR at x{scale:g}",
                                 m["psnr"] - bicubic_bp[scale]["psnr"], strict=True))

    for samples in sorted({k for m, k in table if m == "s3"}):
        s2, s3 = table.get(("s2", samples), {}), table[("s3", samples)]
        for scale in scales:
            both = scale in s2 and scale in s3
            out.append(_goal(f"stage 3 improves on stage 2 ({samples} sample(s)) by > {MEASURABLE_DB:g} dB PSNR "
                             f"at x{scale:g}", s3[scale]["psnr"] - s2[scale]["psnr"] - MEASURABLE_DB if both else None,
                             strict=True))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/quality_table.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="eval_sr.py output folders (or folders holding them)")
    p.add_argument("--json", type=Path, default=None, help="also write the table and the goals here")
    args = p.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        print(f"error: {missing[0]}: no such folder", file=sys.stderr)
        return 2
    table = read_results(args.folders)
    if not table:
        print(f"error: {args.folders[0]}: no summary.json or metrics.json of eval_sr.py under it", file=sys.stderr)
        return 2
    checked = goals(table)
    print("cells: PSNR dB / SSIM / MAE HU / soft-tissue PSNR dB / LR-consistency PSNR dB\n")
    print(markdown(table))
    print("\n| goal | met | margin |\n|---|---|---|")
    for g in checked:
        if g["met"] is None:
            print(f"| {g['goal']} | not measured | - |")
        else:
            print(f"| {g['goal']} | {'yes' if g['met'] else 'no'} | {g['margin']:+.3g} {g['unit']} |")
    if args.json:
        from ldm.util import write_json_atomic

        rows = [{"method": m, "n_samples": k, "label": label(m, k), "scales": {f"x{s:g}": v for s, v in by.items()}}
                for (m, k), by in table.items()]
        write_json_atomic(args.json, {"rows": rows, "goals": checked})
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ldm, for `python bench/quality_table.py`
    sys.exit(main())
