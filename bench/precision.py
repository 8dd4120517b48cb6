"""--precision auto against fp32 and bf16 per backbone: the probe's answer, and the training img/s of each.

For each case: the probe (`selfsup.engine.probe_seconds`, the encoder's forward and backward timed both ways),
what `auto` chose and why, and `selfsup.train.pretrain` img/s at 32-true, bf16-mixed and auto, in turns
(--rounds each), after warm-up steps. auto should match the faster of the two.
Writes bench/results/precision-<tag>.json.

    python bench/precision.py [--steps 20] [--rounds 2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, write  # noqa: E402
from throughput import images_for, selfsup_path  # noqa: E402

from selfsup import engine  # noqa: E402
from selfsup.defaults import for_channels  # noqa: E402
from selfsup.factory import encoder_spec  # noqa: E402

CASES = {  # name: (backbone, backbone args, channels, side, batch)
    "small_cnn-w16-mnist28": ("small_cnn", {"width": 16}, 1, 28, 256),
    "small_cnn-w32-colour32": ("small_cnn", {"width": 32}, 3, 32, 256),
    "resnet18-32px": ("resnet18", {}, 3, 32, 64),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    rows = []
    for case in args.cases.split(","):
        backbone, bargs, channels, side, batch = CASES[case]
        data = images_for(channels, side)
        cfg = for_channels(channels).override(dataset=data.name, backbone=backbone, backbone_args=bargs,
                                              batch_size=batch, monitor_seconds=0)
        spec = encoder_spec(cfg, channels, side)
        probe = engine.probe_seconds(spec)
        chosen = engine.measured_precision(spec)
        steps = args.steps if backbone == "small_cnn" else max(4, args.steps // 2)
        runs: dict = {"32-true": [], "bf16-mixed": [], "auto": []}
        for _ in range(args.rounds):
            for p in runs:
                runs[p].append(selfsup_path(cfg.override(precision=p), data, args.warmup, steps)["img_per_s"])
        img_s = {p: round(float(np.median(v)), 1) for p, v in runs.items()}
        row = {"case": case, "batch": batch, "probe_bf16_speedup": round(probe["fp32"] / probe["bf16"], 3),
               "auto_chose": chosen["precision"], "reason": chosen["reason"], "img_per_s": img_s, "runs": runs,
               "train_bf16_speedup": round(img_s["bf16-mixed"] / img_s["32-true"], 3)}
        print(row, flush=True)
        rows.append(row)
    write(f"precision-{device_tag()}.json", {"machine": machine(), "rows": rows,
                                            "command": "python bench/precision.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    main()
