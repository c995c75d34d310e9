#!/usr/bin/env python3
"""dml against ONNX Runtime pass by pass (not run in CI).

This host's speed drifts by 15-20% between minutes, which is more than the difference
being measured, so runs of several seconds each (bench.py, then `dml bench models`) can
land in different weather. Here one ONNX Runtime session (in this process) and one dml
process (`dml bench models --passes-from-stdin`) take turns: one forward pass each, the
order swapped every pair, a rest before every pass so that neither side's threads are
still spinning from the previous one: ONNX Runtime keeps a worker spinning for about
45 ms after `run` returns (measured here: 46 ms of process CPU during a 100 ms sleep),
which would take a core from the next dml pass; dml's helpers spin 0.3 ms. Each pair is measured within a fraction of a
second; the median of the per-pair ratios is the comparison.

Usage:
    python3 tools/reference/interleave.py --dml target/release/dml [--threads 2]
        [--batches 1 8] [--pairs 30] [--rest 0.15]
"""

import argparse
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np
import torch
import torchvision


def build(name: str) -> torch.nn.Module:
    if name == "resnet50":
        return torchvision.models.resnet50(weights=None).eval()
    return torchvision.models.inception_v3(
        weights=None, aux_logits=False, transform_input=True, init_weights=False
    ).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dml", default="target/release/dml")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--rest", type=float, default=0.15, help="seconds idle before each pass")
    args = ap.parse_args()
    import onnxruntime as ort

    dml = subprocess.Popen(
        [args.dml, "bench", "models", "--passes-from-stdin", "--threads", str(args.threads)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert dml.stdout.readline().strip() == "ready", "dml did not start"

    def dml_pass(name: str, n: int) -> float:
        dml.stdin.write(f"{name} {n}\n")
        dml.stdin.flush()
        return float(dml.stdout.readline())

    print(f"onnxruntime {ort.__version__}, threads {args.threads}, {args.pairs} pairs, "
          f"rest {args.rest} s")
    print(f"{'network':<13} {'batch':>5} {'dml img/s':>10} {'ORT img/s':>10} "
          f"{'median dml/ORT':>15} {'pairs dml faster':>17}")
    for name, size in [("resnet50", 224), ("inception_v3", 299)]:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{name}.onnx")
            torch.onnx.export(build(name), torch.randn(1, 3, size, size), path,
                              input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
                              opset_version=17, dynamo=False)
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for n in args.batches:
            x = np.random.randn(n, 3, size, size).astype(np.float32)

            def ort_pass() -> float:
                t = time.perf_counter()
                sess.run(None, {"x": x})
                return time.perf_counter() - t

            for _ in range(2):  # warm-up
                ort_pass()
                dml_pass(name, n)
            d, o = [], []
            for i in range(args.pairs):
                order = [("o", ort_pass), ("d", lambda: dml_pass(name, n))]
                if i % 2:
                    order.reverse()
                for who, run in order:
                    time.sleep(args.rest)
                    (d if who == "d" else o).append(run())
            ratios = [oo / dd for dd, oo in zip(d, o)]
            faster = sum(r > 1 for r in ratios)
            print(f"{name:<13} {n:>5} {n / statistics.median(d):>10.2f} "
                  f"{n / statistics.median(o):>10.2f} {statistics.median(ratios):>15.3f} "
                  f"{faster:>11}/{len(ratios)}", flush=True)
    dml.stdin.close()
    dml.wait()


if __name__ == "__main__":
    main()
