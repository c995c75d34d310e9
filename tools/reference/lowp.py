#!/usr/bin/env python3
"""Low-precision accuracy of the peers on dml's synthetic weights (not run in CI).

For resnet50 and inception_v3, with the exact weights `dml weights synth --seed 0` writes and
the three inputs of reference.py (pattern0, pattern1, the rocket photo crop), this computes

  * fp32 logits (torchvision, eval mode; checked against reference_logits.json),
  * PyTorch bf16: `torch.autocast("cpu", dtype=torch.bfloat16)`, model and input channels_last,
  * ONNX Runtime int8: the model exported to ONNX (opset 17, dynamic batch), run through
    `onnxruntime.quantization.shape_inference.quant_pre_process`, then `quantize_static` with
    QuantFormat.QDQ, per_channel=True, int8 weights (QInt8), uint8 activations (QUInt8),
    MinMax calibration on 4 batches of 2 pattern images each: the pattern formula of
    reference.py with batch offsets b = 2..9, so none of the calibration images is an
    evaluation input (b = 0, 1 are pattern0, pattern1); `--calibration randn` uses standard
    normal images from numpy's default_rng(0) instead,

and for each low-precision path the relative logit error against fp32,
||low - fp32||_2 / ||fp32||_2, and the top-5 overlap |top5(low) & top5(fp32)|, per input.
It writes models/tests/fixtures/lowp_reference.json (the bounds dml's int8 and bf16 paths are
tested against) and leaves the ONNX models it made in --onnx-out (<net>_fp32.onnx,
<net>_int8.onnx) for interleave.py.

The error of both peers depends on the CPU: oneDNN's bf16 kernels and ONNX Runtime's int8
kernels (VNNI / AMX or AVX2 with 16-bit intermediate sums) differ between machines, so the
JSON records the CPU model and flags this ran on.

Usage (from the repository root):
    dml weights synth --seed 0 --dir /tmp/lowp-weights
    python3 tools/reference/lowp.py --weights /tmp/lowp-weights [--onnx-out /tmp/lowp-onnx]
        [--threads 2] [--nets resnet50 inception_v3] [--out models/tests/fixtures]
"""

import argparse
import json
import pathlib
import platform
import re
import sys
import time

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reference  # noqa: E402  (NETS, MEAN, STD, pattern, sha256, load_model)

INPUTS = ["pattern0", "pattern1", "rocket.jpg"]
CALIB_BATCHES = 4
CALIB_BATCH_SIZE = 2


def inputs(name: str, fixtures: pathlib.Path) -> torch.Tensor:
    """The three inputs of reference.py: pattern b=0, b=1, and the committed rocket crop."""
    _, _, crop = reference.NETS[name]
    photo = Image.open(fixtures / f"rocket_{name}_crop.png").convert("RGB")
    assert photo.size == (crop, crop), photo.size
    normalise = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(reference.MEAN, reference.STD)]
    )
    return torch.cat([torch.from_numpy(reference.pattern(2, crop)), normalise(photo).unsqueeze(0)])


def calibration(crop: int, kind: str) -> list[np.ndarray]:
    """4 batches of 2: the pattern formula with b = 2..9 (b = 0, 1 are evaluation inputs),
    or standard normal images from numpy's default_rng(0)."""
    n = CALIB_BATCHES * CALIB_BATCH_SIZE
    if kind == "randn":
        all_b = np.random.default_rng(0).standard_normal((n, 3, crop, crop), dtype=np.float32)
    else:
        all_b = reference.pattern(2 + n, crop)[2:]
    return [all_b[i : i + CALIB_BATCH_SIZE] for i in range(0, len(all_b), CALIB_BATCH_SIZE)]


def compare(low: np.ndarray, ref: np.ndarray) -> dict:
    low, ref = low.astype(np.float64), ref.astype(np.float64)
    rel = [float(np.linalg.norm(a - b) / np.linalg.norm(b)) for a, b in zip(low, ref)]
    top5 = lambda r: set(np.argsort(-r, kind="stable")[:5].tolist())  # noqa: E731
    overlap = [len(top5(a) & top5(b)) for a, b in zip(low, ref)]
    top1 = [int(np.argmax(a) == np.argmax(b)) for a, b in zip(low, ref)]
    return {
        "rel_err": [float(f"{e:.6g}") for e in rel],
        "top5_overlap": overlap,
        "top1_same": top1,
    }


def export_onnx(model: torch.nn.Module, crop: int, path: pathlib.Path) -> None:
    torch.onnx.export(
        model,
        torch.zeros(1, 3, crop, crop),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )


def quantize(fp32: pathlib.Path, out: pathlib.Path, crop: int, pre_process: bool, calib: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration(crop, calib))

        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {"x": b}

    src = fp32
    if pre_process:
        src = out.with_name(out.stem + "_pre.onnx")
        quant_pre_process(str(fp32), str(src))
    quantize_static(
        str(src),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    if pre_process:
        src.unlink()


def cpu_info() -> dict:
    model, flags = platform.processor(), []
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = sorted(have & {"avx2", "avx512f", "avx512_vnni", "avx_vnni",
                                       "avx512_bf16", "amx_int8", "amx_bf16", "amx_tile"})
                break
    except OSError:
        pass
    return {"model": model, "isa_flags": flags}


def main() -> None:
    root = pathlib.Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=pathlib.Path, default=root / "weights")
    ap.add_argument("--fixtures", type=pathlib.Path, default=root / "models/tests/fixtures",
                    help="where the rocket crops and reference_logits.json are")
    ap.add_argument("--out", type=pathlib.Path, default=None,
                    help="directory for lowp_reference.json (default: --fixtures)")
    ap.add_argument("--onnx-out", type=pathlib.Path, default=pathlib.Path("/tmp/lowp-onnx"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nets", nargs="+", default=list(reference.NETS), choices=list(reference.NETS))
    ap.add_argument("--no-pre-process", action="store_true",
                    help="skip quant_pre_process before quantize_static")
    ap.add_argument("--calibration", choices=["pattern", "randn"], default="pattern",
                    help="calibration images: pattern b = 2..9 (default) or N(0,1) from default_rng(0)")
    args = ap.parse_args()
    out_dir = args.out or args.fixtures
    args.onnx_out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import onnx
    import onnxruntime as ort

    expected = json.loads((args.fixtures / "reference_logits.json").read_text())["nets"]
    result = {
        "generated_by": "tools/reference/lowp.py",
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "cpu": cpu_info(),
        "inputs": INPUTS,
        "metrics": "rel_err = ||low - fp32||_2 / ||fp32||_2 per input (fp32 = torchvision eval); "
                   "top5_overlap = |top5(low) & top5(fp32)|",
        "methods": {
            "torch_bf16": "torch.autocast('cpu', dtype=torch.bfloat16), model and input channels_last, "
                          "one batch of the 3 inputs",
            "ort_int8": {
                "export": "torch.onnx.export opset 17, dynamic batch, dynamo=False",
                "pre_process": not args.no_pre_process,
                "quantize_static": "QuantFormat.QDQ, per_channel=True, weight_type=QInt8, "
                                   "activation_type=QUInt8, reduce_range=False, CalibrationMethod.MinMax",
                "calibration": f"{CALIB_BATCHES} batches of {CALIB_BATCH_SIZE}: " + (
                    f"reference.pattern images b = 2..{1 + CALIB_BATCHES * CALIB_BATCH_SIZE}"
                    if args.calibration == "pattern"
                    else "numpy default_rng(0).standard_normal float32 images"),
                "session": f"CPUExecutionProvider, intra_op_num_threads {args.threads}, default graph optimisation",
            },
            "ort_fp32": "the exported fp32 model in the same session settings (a sanity check of the export)",
        },
        "weights_sha256": {},
        "nets": {},
    }
    for name in args.nets:
        t0 = time.perf_counter()
        _, _, crop = reference.NETS[name]
        wfile = args.weights / f"{name}.safetensors"
        sha = reference.sha256(wfile)
        if sha != expected[name]["weights_sha256"]:
            raise SystemExit(f"{name}: {wfile} is not the weight file reference_logits.json was made from")
        result["weights_sha256"][name] = sha
        model = reference.load_model(name, args.weights)
        x = inputs(name, args.fixtures)

        with torch.no_grad():
            fp32 = model(x).numpy()
        ref = np.array(expected[name]["logits"])
        check = max(np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(fp32, ref))
        print(f"{name}: fp32 vs reference_logits.json max rel err {check:.2e}", flush=True)
        if check > 1e-4:
            raise SystemExit(f"{name}: fp32 logits do not match reference_logits.json")

        # PyTorch bf16 autocast, channels_last.
        cl = reference.load_model(name, args.weights).to(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = cl(x.to(memory_format=torch.channels_last)).float().numpy()
        del cl

        # ONNX Runtime fp32 (sanity) and int8 static QDQ.
        fp32_path = args.onnx_out / f"{name}_fp32.onnx"
        int8_path = args.onnx_out / f"{name}_int8.onnx"
        export_onnx(model, crop, fp32_path)
        quantize(fp32_path, int8_path, crop, not args.no_pre_process, args.calibration)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        xn = x.numpy()
        runs = {}
        for tag, path in [("ort_fp32", fp32_path), ("ort_int8", int8_path)]:
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            runs[tag] = sess.run(None, {"x": xn})[0]
            del sess

        entry = {
            "ort_int8": compare(runs["ort_int8"], fp32),
            "torch_bf16": compare(bf16, fp32),
            "ort_fp32": compare(runs["ort_fp32"], fp32),
        }
        result["nets"][name] = entry
        for tag, e in entry.items():
            print(f"{name:<13} {tag:<10} rel_err {e['rel_err']} top5_overlap {e['top5_overlap']} "
                  f"top1_same {e['top1_same']}", flush=True)
        print(f"{name}: {time.perf_counter() - t0:.0f} s; wrote {fp32_path}, {int8_path}", flush=True)

    path = out_dir / "lowp_reference.json"
    text = json.dumps(result, indent=1)
    # Short number lists on one line each.
    text = re.sub(r"\[\s+([-0-9.e,\s]+?)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    path.write_text(text + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
