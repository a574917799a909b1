"""Export a trained run as one shareable file: weights (EMA by default) + config, in safetensors.

    python -m ldm.export --exp logs/<run> --out my-model.safetensors
    python eval_sr.py --exp my-model.safetensors ...      # eval_sr.py and sr.py load it directly

safetensors stores tensors and text metadata only, so a file someone sends cannot run code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ldm.checkpoint import CheckpointMismatchError, UnsafeCheckpointError
from ldm.experiment import ExperimentError, export_experiment, load_experiment
from ldm.util import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", required=True, help="a log dir written by main.py")
    parser.add_argument("--ckpt", default=None, help="a checkpoint other than checkpoints/last.ckpt")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--no_ema", action="store_true", help="export the trained weights, not their EMA")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="allow a checkpoint that needs arbitrary unpickling (only from a trusted source)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        print(f"error: --out: {out} should end in .safetensors", file=sys.stderr)
        return 2
    try:
        exp = load_experiment(args.exp, args.ckpt, use_ema=not args.no_ema, trust_checkpoint=args.trust_checkpoint)
    except (ExperimentError, ConfigError, CheckpointMismatchError, UnsafeCheckpointError, FileNotFoundError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    export_experiment(exp, out)
    print(f"exported {exp.kind} run {exp.logdir} (step {exp.global_step}, {'EMA' if exp.ema else 'trained'} weights) "
          f"to {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
