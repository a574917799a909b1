"""The quality table of BENCHMARKS.md from eval_sr.py outputs, and issue 8's quality goals checked on it.

    python bench/quality_table.py bench/out/eval            # the folders bench/gpu_measure.sh writes
    python bench/quality_table.py bench/out/eval --json bench/out/quality.json

Reads every <dir>/summary.json (or a single-scale <dir>/metrics.json) under the given folders.
A row is one method at one sample count: bicubic and Lanczos, the regressions (LIIF, LIIF + LR
skip, the first stage alone) and each LDM run with 1 sample or the mean of K. Run names are those
bench/gpu_measure.sh gives (s1, liif, liif-skip, s2, s3) and are labelled accordingly; other names
are printed as they are. A cell is PSNR / SSIM / MAE HU / soft-tissue PSNR / LR-consistency PSNR.

The goals (issue 8), each printed as met / missed with the margin:
  - LIIF + LR skip at least the reference column (7 minutes on one H100) at x2, x4, x8;
  - every learned method beats bicubic in PSNR, SSIM and MAE at every scale;
  - the LDM's mean of K >= the best LIIF baseline's PSNR at every scale, one sample within 0.5 dB;
  - the LDM's MAE (HU) <= the best LIIF baseline's; LR-consistency >= 60 dB at every scale;
  - stage 3 (s3) improves on stage 2 (s2) in PSNR at every scale.
Runs evaluated with eval_sr.py --back_projection get rows of their own ("+ back-projection"),
compared with back-projected LIIF rows where those exist, and with bicubic + back-projection (not
only the projection's doing).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LABELS = {"bicubic": "bicubic", "lanczos": "Lanczos", "liif": "LIIF (EDSR)", "liif-skip": "LIIF + LR skip",
          "s1": "first stage alone", "s2": "LDM", "s3": "LDM after stage 3"}
ORDER = list(LABELS)
# issue 8: EDSR-LIIF with the LR skip, 7 minutes on one H100, test patient lung2 (PSNR, SSIM, MAE HU)
REFERENCE_SKIP = {2.0: (60.48, 0.999, 2.8), 4.0: (47.74, 0.991, 9.8), 8.0: (39.37, 0.959, 23.1)}
LR_CONSISTENCY_DB = 60.0
BP = "+bp"  # suffix of a method evaluated with eval_sr.py --back_projection
ONE_SAMPLE_DB = 0.5

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
                    samples = int(doc.get("n_samples") or 1) if info.get("kind") == "ldm" else 1
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


def _goal(name: str, margin: float, unit: str = "dB") -> dict[str, Any]:
    return {"goal": name, "met": margin >= 0, "margin": margin, "unit": unit}


def goals(table: Table) -> list[dict[str, Any]]:
    """Each checkable goal of issue 8 with its margin (>= 0: met); goals whose rows are missing are left out."""
    out: list[dict[str, Any]] = []
    bicubic = table.get(("bicubic", 1), {})
    skip = table.get(("liif-skip", 1), {})
    for scale, (psnr, _, _) in REFERENCE_SKIP.items():
        if scale in skip:
            out.append(_goal(f"LIIF + LR skip PSNR >= reference {psnr} dB at x{scale:g}", skip[scale]["psnr"] - psnr))
    bicubic_bp = table.get(("bicubic" + BP, 1), {})
    learned = [key for key in table if key[0].removesuffix(BP) not in ("bicubic", "lanczos")]
    for key in learned:
        for scale, m in table[key].items():
            if scale in bicubic:
                b = bicubic[scale]
                worst = min(m["psnr"] - b["psnr"], 100 * (m["ssim"] - b["ssim"]), b["mae_hu"] - m["mae_hu"])
                out.append(_goal(f"{label(*key)} beats bicubic in PSNR, SSIM, MAE at x{scale:g}", worst,
                                 "worst of dB / SSIM x100 / HU"))
            if key[0].endswith(BP) and scale in bicubic_bp:  # not only the projection's doing
                out.append(_goal(f"{label(*key)} beats bicubic + back-projection in PSNR at x{scale:g}",
                                 m["psnr"] - bicubic_bp[scale]["psnr"]))
    for (method, samples), by_scale in table.items():
        if method.removesuffix(BP) not in ("s2", "s3"):
            continue
        suffix = BP if method.endswith(BP) else ""  # like against like: back-projected LIIFs for a projected LDM
        liifs = [table[k] for k in ((f"liif{suffix}", 1), (f"liif-skip{suffix}", 1)) if k in table]
        for scale, m in by_scale.items():
            best = max((run[scale] for run in liifs if scale in run), key=lambda r: r["psnr"], default=None)
            if best is not None:
                slack = 0.0 if samples > 1 else ONE_SAMPLE_DB
                out.append(_goal(f"{label(method, samples)} PSNR >= best LIIF - {slack:g} dB at x{scale:g}",
                                 m["psnr"] - best["psnr"] + slack))
                out.append(_goal(f"{label(method, samples)} MAE <= best LIIF's at x{scale:g}",
                                 best["mae_hu"] - m["mae_hu"], "HU"))
            out.append(_goal(f"{label(method, samples)} LR-consistency >= {LR_CONSISTENCY_DB:g} dB at x{scale:g}",
                             m["lr_psnr"] - LR_CONSISTENCY_DB))
    for samples in sorted({s for m, s in table if m == "s3"}):
        s2, s3 = table.get(("s2", samples), {}), table[("s3", samples)]
        for scale in sorted(set(s2) & set(s3)):
            out.append(_goal(f"stage 3 improves on stage 2 ({samples} sample(s)) at x{scale:g}",
                             s3[scale]["psnr"] - s2[scale]["psnr"]))
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
        print(f"| {g['goal']} | {'yes' if g['met'] else 'no'} | {g['margin']:+.2f} {g['unit']} |")
    if args.json:
        from ldm.util import write_json_atomic

        rows = [{"method": m, "n_samples": k, "label": label(m, k), "scales": {f"x{s:g}": v for s, v in by.items()}}
                for (m, k), by in table.items()]
        write_json_atomic(args.json, {"rows": rows, "goals": checked})
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ldm, for `python bench/quality_table.py`
    sys.exit(main())
