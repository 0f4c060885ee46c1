"""Models bundled with switchyard, and the data to check them.

``digits_mlp.onnx`` is built by ``tools/build_digits_model.py`` (see that script for
the recipe and the input encoding: 64 uint8 pixel values 0..16, 8x8 row-major).
``digits_heldout.json`` holds the held-out split it was never trained on.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import attrs
import numpy as np

MODELS_DIR: Path = Path(__file__).resolve().parent
DIGITS_MODEL: Path = MODELS_DIR / "digits_mlp.onnx"
DIGITS_HELDOUT: Path = MODELS_DIR / "digits_heldout.json"


@attrs.frozen
class HeldOut:
    """The held-out digits: ``pixels`` uint8 ``[N, 64]`` (0..16), ``labels`` int ``[N]``."""

    pixels: np.ndarray
    labels: np.ndarray
    indices: tuple[int, ...]
    seed: int
    onnx_accuracy: float


def digits_heldout() -> HeldOut:
    """Load the held-out split written next to the model by the build script."""
    meta = json.loads(DIGITS_HELDOUT.read_text(encoding="utf-8"))
    pixels = np.frombuffer(base64.b64decode(meta["pixels_b64"]), dtype=np.uint8)
    return HeldOut(
        pixels=pixels.reshape(-1, 64),
        labels=np.asarray(meta["labels"], dtype=np.int64),
        indices=tuple(meta["indices"]),
        seed=int(meta["seed"]),
        onnx_accuracy=float(meta["onnx_accuracy"]),
    )
