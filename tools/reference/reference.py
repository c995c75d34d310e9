#!/usr/bin/env python3
"""Reference logits from torchvision for dml's Rust networks (not run in CI).

Loads the synthetic weights written by `dml weights synth --seed 0` (safetensors, torchvision
tensor names) into torchvision's resnet50 and inception_v3 (eval mode; inception with
transform_input=True and no aux head), runs

  * two deterministic pattern images (the same formula as models/tests/reference.rs), and
  * one real photograph (models/tests/fixtures/rocket.jpg) through torchvision's own
    preprocessing (PIL: convert("RGB"), Resize, CenterCrop, ToTensor, Normalize),

and writes small committed fixtures to models/tests/fixtures/:

  * reference_logits.json  - logits and top-5 per network and input, plus the SHA-256 of the
                             weight files used, so the Rust test knows it regenerated them exactly
  * rocket_<net>_crop.png  - torchvision's resized + centre-cropped pixels (u8, lossless), used
                             both as the network input and to check our preprocessing
  * card_<net>_crop.png    - the same transforms on an integer-defined test card, to check our
                             resize byte for byte without JPEG decoder differences

Usage (from the repository root):
    dml weights synth --seed 0          # or: cargo run -p dml-models --example models_demo
    python3 tools/reference/reference.py [--weights weights] [--out models/tests/fixtures]
"""

import argparse
import hashlib
import json
import math
import pathlib

import numpy as np
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms

NETS = {
    # name: (constructor, resize, crop)
    "resnet50": (lambda: torchvision.models.resnet50(weights=None), 256, 224),
    "inception_v3": (
        lambda: torchvision.models.inception_v3(
            weights=None, aux_logits=False, transform_input=True, init_weights=False
        ),
        342,
        299,
    ),
}
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def pattern(n: int, size: int) -> np.ndarray:
    """x[b,c,h,w] = 2 sin(0.05 (h+1)(c+1) + 0.031 w (b+2) + 0.5 b), computed in float64."""
    b, c, h, w = np.meshgrid(
        np.arange(n), np.arange(3), np.arange(size), np.arange(size), indexing="ij"
    )
    x = 0.05 * ((h + 1) * (c + 1)) + 0.031 * (w * (b + 2)) + 0.5 * b
    return (2.0 * np.sin(x)).astype(np.float32)


def pattern_image() -> Image.Image:
    """A 517x333 RGB test card with gradients and hard wrap-around edges, integer-defined
    (same formula as models/tests/common/mod.rs) so both sides start from identical pixels."""
    y, x, c = np.meshgrid(np.arange(333), np.arange(517), np.arange(3), indexing="ij")
    v = (x * x // 97 + 3 * y + 40 * c + (x * y) // 211) % 256
    return Image.fromarray(v.astype(np.uint8), "RGB")


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_model(name: str, weights_dir: pathlib.Path) -> torch.nn.Module:
    ctor, _, _ = NETS[name]
    model = ctor().eval()
    loaded = load_file(str(weights_dir / f"{name}.safetensors"))
    state = model.state_dict()
    missing = [k for k in state if k not in loaded and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in loaded if k not in state]
    if missing or unexpected:
        raise SystemExit(f"{name}: missing {missing[:5]} unexpected {unexpected[:5]}")
    for k, v in loaded.items():
        if state[k].shape != v.shape:
            raise SystemExit(f"{name}: {k} shape {tuple(v.shape)} != {tuple(state[k].shape)}")
    state.update(loaded)
    model.load_state_dict(state, strict=True)
    return model


def main() -> None:
    root = pathlib.Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=pathlib.Path, default=root / "weights")
    ap.add_argument("--out", type=pathlib.Path, default=root / "models/tests/fixtures")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)

    photo = Image.open(args.out / "rocket.jpg").convert("RGB")
    result = {
        "generator": "tools/reference/reference.py",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "seed": 0,
        "inputs": ["pattern0", "pattern1", "rocket.jpg"],
        "nets": {},
    }
    for name, (_, resize, crop) in NETS.items():
        model = load_model(name, args.weights)
        # torchvision's preprocessing, split so the u8 crop can be saved losslessly.
        cropped = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop)])(photo)
        cropped.save(args.out / f"rocket_{name}_crop.png", optimize=True)
        # The same transforms on lossless pixels: isolates resizing from JPEG decoding.
        card = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop)])(pattern_image())
        card.save(args.out / f"card_{name}_crop.png", optimize=True)
        normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
        x = torch.cat([torch.from_numpy(pattern(2, crop)), normalise(cropped).unsqueeze(0)])
        with torch.no_grad():
            logits = model(x).double()
        top5 = torch.topk(logits, 5, dim=1).indices.tolist()
        result["nets"][name] = {
            "weights_sha256": sha256(args.weights / f"{name}.safetensors"),
            "logits": [[float(f"{v:.9g}") for v in row] for row in logits.tolist()],
            "top5": top5,
            "logit_std": [float(r.std()) for r in logits],
        }
        gaps = [sorted(r, reverse=True) for r in logits.tolist()]
        print(name, "top5", top5, "gap 5th-6th", [round(g[4] - g[5], 4) for g in gaps])
    (args.out / "reference_logits.json").write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out / "reference_logits.json")


if __name__ == "__main__":
    main()
