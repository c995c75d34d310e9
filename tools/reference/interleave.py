#!/usr/bin/env python3
"""dml against its peers pass by pass, at each precision (not run in CI).

This host's speed drifts by 15-20% between minutes, which is more than the difference
being measured, so runs of several seconds each (bench.py, then `dml bench models`) can
land in different weather. Here the peer (in this process) and one dml process
(`dml bench models --passes-from-stdin`) take turns: one forward pass each, the order
swapped every pair, a rest before every pass so that neither side's threads are still
spinning from the previous one: ONNX Runtime keeps a worker spinning for about 45 ms after
`run` returns (measured here: 46 ms of process CPU during a 100 ms sleep), which would take a
core from the next dml pass; dml's helpers spin 0.3 ms. Each pair is measured within a
fraction of a second; the median of the per-pair ratios is the comparison.

The pairs, one per precision named in --precisions:

  fp32  dml fp32 vs ONNX Runtime fp32
  int8  dml int8 vs ONNX Runtime int8 (the static QDQ model lowp.py writes: needs --onnx-dir)
  bf16  dml bf16 vs PyTorch bf16 autocast, model and input channels_last (oneDNN)

With --onnx-dir, ONNX Runtime runs <net>_fp32.onnx and <net>_int8.onnx from there (lowp.py's
--onnx-out); without it, fp32 runs a fresh export with random weights (weights do not change
fp32 speed). --weights is passed to dml and, for bf16, loaded into PyTorch as well.

Usage:
    python3 tools/reference/interleave.py --dml target/release/dml [--threads 2]
        [--batches 1 8] [--pairs 30] [--rest 0.15]
    python3 tools/reference/lowp.py --weights /tmp/lowp-weights      # writes /tmp/lowp-onnx
    python3 tools/reference/interleave.py --dml target/release/dml --weights /tmp/lowp-weights
        --onnx-dir /tmp/lowp-onnx --precisions int8 fp32 bf16 --pairs 10
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision

NETS = [("resnet50", 224), ("inception_v3", 299)]
PEER = {"fp32": "onnxruntime fp32", "int8": "onnxruntime int8", "bf16": "pytorch bf16 cl"}


def build(name: str) -> torch.nn.Module:
    if name == "resnet50":
        return torchvision.models.resnet50(weights=None).eval()
    return torchvision.models.inception_v3(
        weights=None, aux_logits=False, transform_input=True, init_weights=False
    ).eval()


def torch_model(name: str, weights: pathlib.Path | None) -> torch.nn.Module:
    if weights is None:
        return build(name)
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import reference

    return reference.load_model(name, weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dml", default="target/release/dml")
    ap.add_argument("--weights", type=pathlib.Path, default=None,
                    help="weights directory for dml (and PyTorch bf16); default: dml's own default")
    ap.add_argument("--onnx-dir", type=pathlib.Path, default=None,
                    help="lowp.py's --onnx-out: <net>_fp32.onnx and <net>_int8.onnx")
    ap.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "int8", "bf16"])
    ap.add_argument("--nets", nargs="+", default=[n for n, _ in NETS], choices=[n for n, _ in NETS])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--rest", type=float, default=0.15, help="seconds idle before each pass")
    args = ap.parse_args()
    if "int8" in args.precisions and args.onnx_dir is None:
        ap.error("int8 needs --onnx-dir (the quantized models written by lowp.py)")
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    cmd = [args.dml, "bench", "models", "--passes-from-stdin", "--threads", str(args.threads),
           "--precision", ",".join(args.precisions)]
    if args.weights is not None:
        cmd += ["--weights", str(args.weights)]
    dml_err = tempfile.TemporaryFile(mode="w+")
    dml = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=dml_err,
                           text=True)

    def dml_failed(what: str) -> None:
        dml_err.seek(0)
        raise SystemExit(f"dml {what}: {dml_err.read().strip()[-2000:]}")

    if dml.stdout.readline().strip() != "ready":
        dml_failed("did not start")

    def dml_pass(name: str, n: int, prec: str) -> float:
        dml.stdin.write(f"{name} {n} {prec}\n")
        dml.stdin.flush()
        line = dml.stdout.readline()
        if not line:
            dml_failed(f"stopped at `{name} {n} {prec}`")
        return float(line)

    print(f"dml {args.dml} --precision {','.join(args.precisions)}; onnxruntime {ort.__version__}, "
          f"torch {torch.__version__}; threads {args.threads}, {args.pairs} pairs, rest {args.rest} s")
    print(f"{'network':<13} {'batch':>5} {'prec':<5} {'peer':<17} {'dml img/s':>10} "
          f"{'peer img/s':>10} {'median dml/peer':>16} {'pairs dml faster':>17}", flush=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    for name, size in NETS:
        if name not in args.nets:
            continue
        # One peer per precision for this network: a function running one pass on x.
        peers = {}
        with tempfile.TemporaryDirectory() as tmp:
            for prec in args.precisions:
                if prec in ("fp32", "int8"):
                    if args.onnx_dir is not None:
                        path = args.onnx_dir / f"{name}_{prec}.onnx"
                    else:
                        path = pathlib.Path(tmp) / f"{name}.onnx"
                        torch.onnx.export(build(name), torch.randn(1, 3, size, size), str(path),
                                          input_names=["x"], output_names=["logits"],
                                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
                                          opset_version=17, dynamo=False)
                    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                    peers[prec] = lambda x, s=sess: s.run(None, {"x": x.numpy()})
                else:
                    model = torch_model(name, args.weights).to(memory_format=torch.channels_last)

                    def bf16(x, m=model):
                        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                            return m(x.contiguous(memory_format=torch.channels_last))

                    peers[prec] = bf16
        for n in args.batches:
            x = torch.randn(n, 3, size, size)
            xs = {"bf16": x.contiguous(memory_format=torch.channels_last)}
            for prec in args.precisions:
                xp = xs.get(prec, x)

                def peer_pass(f=peers[prec], xp=xp) -> float:
                    t = time.perf_counter()
                    f(xp)
                    return time.perf_counter() - t

                def mine(prec=prec) -> float:
                    return dml_pass(name, n, prec)

                for _ in range(2):  # warm-up
                    peer_pass()
                    mine()
                d, o = [], []
                for i in range(args.pairs):
                    order = [("o", peer_pass), ("d", mine)]
                    if i % 2:
                        order.reverse()
                    for who, run in order:
                        time.sleep(args.rest)
                        (d if who == "d" else o).append(run())
                ratios = [oo / dd for dd, oo in zip(d, o)]
                faster = sum(r > 1 for r in ratios)
                print(f"{name:<13} {n:>5} {prec:<5} {PEER[prec]:<17} {n / statistics.median(d):>10.2f} "
                      f"{n / statistics.median(o):>10.2f} {statistics.median(ratios):>16.3f} "
                      f"{faster:>14}/{len(ratios)}", flush=True)
        del peers
    dml.stdin.close()
    dml.wait()


if __name__ == "__main__":
    main()
