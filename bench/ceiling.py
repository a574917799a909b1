"""The first stage's reconstruction from the HR latent: the ceiling an LDM on that first stage can reach.

    python bench/ceiling.py --exp logs/<first-stage or LDM run> --split test --lr_size 32 \
        --scale_ratio 2 3.5 4 --every 4

Takes eval_sr.py's flags and slices, so the pairs (GT, LR) are the ones its table scores: per
scale, bicubic and decode(encode(GT), GT size, LR) (what a perfect denoiser, one that returns
the HR latent itself, would give), PSNR / SSIM / MAE HU by the same metrics. For an LDM run its
frozen first stage is used. The table goes to stdout, the means to --json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import eval_sr  # noqa: E402
from bench.common import write_json  # noqa: E402
from ldm.evaluation.protocol import load, scale_name  # noqa: E402
from ldm.evaluation.runner import BicubicBaseline, score  # noqa: E402
from ldm.pipeline import image_seed  # noqa: E402


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = eval_sr.get_parser()
    parser.add_argument("--json", default=None, help="write the per-scale means here")
    args = parser.parse_args(argv)
    exp, _, protocol, slices, _ = eval_sr.setup(args)
    if exp.kind not in ("ldm", "first_stage"):
        raise SystemExit(f"--exp {args.exp}: a first-stage or LDM run, got a {exp.kind} run")
    first_stage = exp.model.first_stage if exp.kind == "ldm" else exp.model
    bicubic = BicubicBaseline()
    means: dict[str, dict[str, dict[str, float]]] = {}
    for scale in protocol.scale_ratios:
        rows: dict[str, dict[str, list[float]]] = {"bicubic": {}, "first stage from the HR latent": {}}
        for ref in slices.slices:
            x = load(ref, protocol.hu_window).to(args.device)
            gt, lr = protocol.pair(x, scale, image_seed(protocol.seed, ref.name))
            out = tuple(gt.shape[-2:])
            outputs = {"bicubic": bicubic.super_resolve(lr, out),
                       "first stage from the HR latent": first_stage.decode(first_stage.encode(gt), out, lr=lr)}
            for name, sr in outputs.items():
                for key, values in score(sr.cpu(), gt.cpu(), lr.cpu(), protocol, slices.data_kind).items():
                    rows[name].setdefault(key, []).extend(float(v) for v in values)
        means[scale_name(scale)] = {name: {k: sum(v) / len(v) for k, v in m.items()} for name, m in rows.items()}
        print(f"\n{scale_name(scale)} ({len(slices.slices)} slices)")
        for name, m in means[scale_name(scale)].items():
            print(f"{name:32s} {m['psnr']:6.2f} dB  SSIM {m['ssim']:.4f}  MAE {m.get('mae_hu', m['mae']):6.2f}")
    if args.json:
        write_json(args.json, {"exp": str(args.exp), "scales": means})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
