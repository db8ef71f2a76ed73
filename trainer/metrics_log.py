"""One JSON record per logged step (``metrics.jsonl``), a console line, and TensorBoard events
through DeepSpeed's monitor."""
from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger("trainer")


class MetricsLogger:
    def __init__(self, path: Path, enabled: bool, monitor=None):
        self.enabled = enabled
        self.monitor = monitor if monitor is not None and getattr(monitor, "enabled", False) else None
        self.f = open(path, "a") if enabled else None

    def write(self, rec: dict) -> None:
        if not self.enabled:
            return
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        mfu = f"{100 * rec['mfu']:.1f}%" if rec.get("mfu") is not None else "n/a"
        gn = f"{rec['grad_norm']:.3f}" if rec.get("grad_norm") is not None else "n/a"
        tot = rec["data_s"] + rec["compute_s"]
        log.info("step %6d | loss %.4f | lr %.2e | gnorm %s | %.1f img/s | data %.0f%% | %.3f TFLOP/s | MFU %s | mem %.2f GB",
                 rec["step"], rec["loss"], rec["lr"], gn, rec["images_per_s"],
                 100 * rec["data_s"] / tot if tot else 0.0, rec["tflops"], mfu, rec["peak_mem_gb"])
        if self.monitor is not None:
            self.monitor.write_events([(f"Train/{k}", float(rec[k]), rec["step"])
                                       for k in ("loss", "lr", "images_per_s", "tflops")
                                       if rec.get(k) is not None])

    def close(self) -> None:
        if self.f:
            self.f.close()
