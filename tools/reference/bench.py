#!/usr/bin/env python3
"""Throughput of the peers dml's models are compared with (not run in CI).

PyTorch eager (torchvision resnet50 / inception_v3, NCHW and channels_last) and ONNX Runtime
(the same models exported to ONNX), images per second at the given batch sizes with a fixed
thread count, so docs/BENCHMARKS.md can put them next to `dml bench models` from one run on
one machine. Weights do not change the speed; random initialisation is used.

Usage:
    python3 tools/reference/bench.py [--threads 2] [--batches 1 8 32] [--seconds 5]
"""

import argparse
import os
import tempfile
import time

import numpy as np
import torch
import torchvision


def timed(fn, seconds: float) -> float:
    """Mean seconds per call: one warm-up, then at least 3 calls or `seconds` of work."""
    fn()
    runs, total = 0, 0.0
    while runs < 3 or (total < seconds and runs < 50):
        t = time.perf_counter()
        fn()
        total += time.perf_counter() - t
        runs += 1
    return total / runs


def build(name: str) -> torch.nn.Module:
    if name == "resnet50":
        return torchvision.models.resnet50(weights=None).eval()
    return torchvision.models.inception_v3(
        weights=None, aux_logits=False, transform_input=True, init_weights=False
    ).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument(
        "--ort-only", action="store_true", help="skip PyTorch (for quick interleaved A/B runs)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    import onnxruntime as ort

    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, threads {args.threads}")
    print(f"{'network':<13} {'runtime':<22} {'batch':>5} {'img/s':>8}")
    for name, size in [("resnet50", 224), ("inception_v3", 299)]:
        model = build(name)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"{name}.onnx")
            torch.onnx.export(
                model,
                torch.randn(1, 3, size, size),
                path,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
                opset_version=17,
                dynamo=False,
            )
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            for n in args.batches:
                x = torch.randn(n, 3, size, size)
                if not args.ort_only:
                    with torch.inference_mode():
                        t = timed(lambda: model(x), args.seconds)
                        print(f"{name:<13} {'pytorch eager NCHW':<22} {n:>5} {n / t:>8.2f}", flush=True)
                        cl = model.to(memory_format=torch.channels_last)
                        xc = x.to(memory_format=torch.channels_last)
                        t = timed(lambda: cl(xc), args.seconds)
                        print(f"{name:<13} {'pytorch channels_last':<22} {n:>5} {n / t:>8.2f}", flush=True)
                        model = model.to(memory_format=torch.contiguous_format)
                xn = x.numpy().astype(np.float32)
                t = timed(lambda: sess.run(None, {"x": xn}), args.seconds)
                print(f"{name:<13} {'onnxruntime':<22} {n:>5} {n / t:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
