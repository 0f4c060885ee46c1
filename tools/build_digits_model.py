"""Build the bundled digit-recognition model reproducibly.

Trains a small MLP on scikit-learn's bundled 8x8 digits set (UCI optdigits, shipped
inside scikit-learn, so no network is needed), converts it with skl2onnx and writes

* ``switchyard/apps/models/digits_mlp.onnx``   the model (float32 input ``[N, 64]``,
  dynamic batch dimension; outputs ``label`` int64 ``[N]`` and ``probabilities``
  float32 ``[N, 10]``),
* ``switchyard/apps/models/digits_heldout.json``  the held-out split the model never
  saw in training (dataset indices, pixels, labels) plus the seed, the library
  versions and the accuracy onnxruntime measured on it, so tests and benchmarks can
  measure accuracy without scikit-learn installed.

Input encoding: one sample is the 8x8 image row-major, 64 pixel values in the
dataset's own units, 0 (white) .. 16 (black). On the wire that is 64 ``uint8`` bytes
with values 0..16; the scaling to the network's range happens inside the ONNX graph
(a StandardScaler fitted on the training split), so the model takes the raw values.
Clients with 0..255 greyscale pass ``params {"scale": "0.0627451"}`` (16/255).

Run: ``python tools/build_digits_model.py [--out DIR] [--check]``
(needs the ``model`` extra: scikit-learn, skl2onnx, onnx). Same library versions
give byte-identical output; ``--check`` rebuilds into a temporary directory and fails
if the committed files differ.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

SEED = 20240607
TEST_SIZE = 0.2
HIDDEN = (64,)
MODEL_NAME = "digits_mlp.onnx"
HELDOUT_NAME = "digits_heldout.json"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "switchyard" / "apps" / "models"
# Opsets old enough for any onnxruntime >= 1.16, new enough for every op used here.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def build(out_dir: Path) -> dict[str, object]:
    """Train, convert and write both files into ``out_dir``; return the metadata."""
    import onnxruntime as ort
    import skl2onnx
    import sklearn
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    digits = load_digits()
    X = digits.data.astype(np.float32)  # (1797, 64), values 0..16
    y = digits.target.astype(np.int64)
    indices = np.arange(len(y))
    train_idx, test_idx = train_test_split(indices, test_size=TEST_SIZE, random_state=SEED, stratify=y)
    train_idx.sort()
    test_idx.sort()

    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "mlp",
                MLPClassifier(
                    hidden_layer_sizes=HIDDEN,
                    alpha=1e-3,
                    max_iter=600,
                    random_state=SEED,
                ),
            ),
        ]
    )
    pipeline.fit(X[train_idx], y[train_idx])

    onx = convert_sklearn(
        pipeline,
        name="digits_mlp",
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    onx.doc_string = "8x8 digits MLP; input float32 [N,64] pixel values 0..16 row-major"
    model_bytes = onx.SerializeToString()

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    labels, probs = session.run(None, {"input": X[test_idx]})
    onnx_accuracy = float((labels == y[test_idx]).mean())
    sklearn_accuracy = float((pipeline.predict(X[test_idx]) == y[test_idx]).mean())
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise SystemExit("probabilities do not sum to 1: conversion is wrong")

    pixels = X[test_idx].astype(np.uint8)  # exact: the dataset holds integers 0..16
    meta: dict[str, object] = {
        "description": "Held-out split of sklearn.datasets.load_digits() never used in training",
        "encoding": "each sample: 64 uint8 pixel values 0..16, 8x8 row-major",
        "seed": SEED,
        "test_size": TEST_SIZE,
        "hidden_layer_sizes": list(HIDDEN),
        "indices": [int(i) for i in test_idx],
        "labels": [int(v) for v in y[test_idx]],
        "pixels_b64": base64.b64encode(pixels.tobytes()).decode("ascii"),
        "onnx_accuracy": round(onnx_accuracy, 6),
        "sklearn_accuracy": round(sklearn_accuracy, 6),
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "versions": {
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "numpy": np.__version__,
        },
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MODEL_NAME).write_bytes(model_bytes)
    heldout_text = json.dumps(meta, separators=(",", ":")) + "\n"
    (out_dir / HELDOUT_NAME).write_text(heldout_text, encoding="utf-8")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--check", action="store_true", help="rebuild into a temp dir and compare with --out")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            meta = build(Path(tmp))
            same = all(
                (Path(tmp) / name).read_bytes() == (args.out / name).read_bytes() for name in (MODEL_NAME, HELDOUT_NAME)
            )
        print(f"rebuilt: held-out accuracy {meta['onnx_accuracy']}; identical: {same}")
        return 0 if same else 1
    meta = build(args.out)
    print(
        f"wrote {args.out / MODEL_NAME} ({meta['model_sha256'][:12]}) and {HELDOUT_NAME}: "
        f"held-out accuracy onnx {meta['onnx_accuracy']} sklearn {meta['sklearn_accuracy']} "
        f"on {len(meta['labels'])} samples"  # type: ignore[arg-type]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
