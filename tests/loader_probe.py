"""Run in a fresh process by the resume tests: iterate a loader, optionally restoring or saving
its state, and print what it yielded (sample ids and a hash of the pixels) as JSON."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dali_pipes import PretrainOptions, build_pretrain_loader  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kind", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--skip", type=int, default=0, help="batches to consume before saving state")
    p.add_argument("--take", type=int, required=True, help="batches to record")
    p.add_argument("--state-in")
    p.add_argument("--state-out")
    a = p.parse_args()
    opts = PretrainOptions(img_size=64, batch_size=a.batch, num_threads=2, seed=3, shuffle_buffer=32, device="cpu")
    ld = build_pretrain_loader(a.data, opts, kind=a.kind, return_keys=True)
    if a.state_in:
        ld.load_state_dict(json.loads(Path(a.state_in).read_text()))

    def batches():
        while True:
            yield from ld

    it = batches()
    for _ in range(a.skip):
        next(it)
    if a.state_out:
        Path(a.state_out).write_text(json.dumps(ld.state_dict()))
    out = []
    for _ in range(a.take):
        b = next(it)
        out.append({"keys": b["keys"], "sha": hashlib.sha256(b["image"].numpy().tobytes()).hexdigest(),
                    "epoch": ld.epoch})
    print(json.dumps({"len": len(ld), "batches": out}))


if __name__ == "__main__":
    main()
