"""The model registry of the inference service: manifest-declared ONNX models.

Each model is declared in the manifest (:class:`ModelConfig`): a name, a file inside
the models directory, the task types it serves, how request bytes decode into its
input (:class:`~switchyard.services.inference.tensors.InputSpec` fields) and how its
output becomes a result (``argmax`` or ``raw``).

What a caller may rely on:

* A task's ``model_path`` is resolved only inside the models directory: a path that
  starts with ``path_prefix`` (``/models/`` as the Go service sends) or is relative is taken
  relative to it; an absolute path must lie inside it; ``..`` and symlinks that lead
  out are refused. A bare model name also works. Outside, missing, not ONNX and not
  declared are four different error messages.
* Models load once: at start when ``preload`` (the service is ready only when they
  are), otherwise on first use, under a per-model lock, in a worker thread.
* :meth:`LoadedModel.compute` (run in a thread by the batcher) never raises: it
  returns one outcome per request, and when a stacked batch fails it retries the
  requests one by one so that only the bad one fails.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import trio

from switchyard.services.inference.tensors import InputSpec, TensorError

__all__ = [
    "BUNDLED_MODELS_DIR",
    "LoadedModel",
    "ModelConfig",
    "ModelError",
    "ModelRegistry",
    "Outcome",
    "SessionConfig",
    "check_model_files",
    "digits_model",
]

BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[2] / "apps" / "models"

_MAX_ERROR_TEXT = 400
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
}


class ModelError(ValueError):
    """A task names no usable model; ``str(exc)`` is the message for the peer."""


@attrs.frozen
class ModelConfig:
    """One model as declared in the manifest (``[[actor.config.models]]``)."""

    name: str
    #: File inside the models directory (relative), e.g. ``"digits_mlp.onnx"``.
    path: str
    task_types: list[str] = attrs.Factory(list)
    #: Decoding of one sample; each may be overridden per task by ``params``.
    dtype: str = "float32"
    shape: list[int] = attrs.Factory(lambda: [1])
    scale: float = 1.0
    offset: float = 0.0
    #: ``argmax``: result ``{label, class_index, confidence}``; ``raw``: ``{outputs: {name: values}}``.
    postprocess: Literal["argmax", "raw"] = "argmax"
    #: Output used by ``argmax`` ("" = the last output of the graph).
    output: str = ""
    #: Apply softmax before ``argmax`` (for models that output logits).
    softmax: bool = False
    labels: list[str] = attrs.Factory(list)
    preload: bool = True

    def input_spec(self) -> InputSpec:
        return InputSpec(dtype=self.dtype, shape=tuple(self.shape), scale=self.scale, offset=self.offset)


def check_model_files(models: Sequence[ModelConfig], models_dir: str | Path = "") -> None:
    """Raise ``ValueError`` naming the key when a declared model file is missing or
    outside the models directory (what ``switchyard check`` reports before a run)."""
    root = (Path(models_dir) if models_dir else BUNDLED_MODELS_DIR).resolve()
    for index, model in enumerate(models):
        file = (root / model.path).resolve()
        if not file.is_relative_to(root):
            raise ValueError(f"key 'models[{index}].path': {model.path!r} is outside the models directory {root}")
        if not file.is_file():
            raise ValueError(f"key 'models[{index}].path': model file {model.path!r} does not exist in {root}")


def digits_model() -> ModelConfig:
    """The bundled digits MLP (see ``tools/build_digits_model.py``): 64 uint8 pixels 0..16."""
    return ModelConfig(
        name="digits",
        path="digits_mlp.onnx",
        task_types=["digit_recognition"],
        dtype="uint8",
        shape=[64],
        output="probabilities",
        labels=[str(d) for d in range(10)],
    )


@attrs.frozen
class SessionConfig:
    """onnxruntime session options shared by every model of one service."""

    #: Threads one ``session.run`` may use; 1 lets the service run one batch per core instead.
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"

    def build(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization]
        options.log_severity_level = 3  # errors only; ours are reported per task
        return options


#: ``(results, None)`` with one result dict per row, or ``(None, error message)``.
Outcome = tuple[list[dict[str, Any]] | None, str | None]


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 3] + "..."


class LoadedModel:
    """A model with its onnxruntime session; ``compute`` is safe from several threads."""

    def __init__(self, config: ModelConfig, path: Path, session: Any) -> None:
        self.config = config
        self.name = config.name
        self.path = path
        self.session = session
        first = session.get_inputs()[0]
        self.input_name: str = first.name
        self.input_dtype = np.dtype(_ORT_TYPES.get(first.type, np.float32))
        dims = list(first.shape) or [None]
        self.batchable = not isinstance(dims[0], int) or dims[0] != 1
        self.sample_dims: tuple[int | None, ...] = tuple(d if isinstance(d, int) else None for d in dims[1:])
        self.output_names: list[str] = [o.name for o in session.get_outputs()]
        wanted = config.output or self.output_names[-1]
        if wanted not in self.output_names:
            raise ModelError(
                f"model {self.name!r}: output {wanted!r} not in the graph (outputs: {', '.join(self.output_names)})"
            )
        self.output_index = self.output_names.index(wanted)
        self.spec = config.input_spec()

    def describe_input(self) -> str:
        dims = ["N", *("?" if d is None else str(d) for d in self.sample_dims)]
        return f"[{', '.join(dims)}]"

    def check_sample_shape(self, shape: tuple[int, ...]) -> None:
        """Raise :class:`TensorError` unless ``shape`` fits the graph's input (minus batch)."""
        dims = self.sample_dims
        if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape, strict=False)):
            raise TensorError(
                f"input shape {list(shape)} does not fit model {self.name!r} input {self.describe_input()}"
            )

    # -- run in a worker thread --------------------------------------------------------
    def compute(self, arrays: Sequence[np.ndarray]) -> list[Outcome]:
        """Run the requests ``arrays`` (each ``[rows, *sample]``) as one batch.

        Never raises. If the stacked run fails, each request is run alone so that only
        the requests that fail by themselves get an error.
        """
        try:
            stacked = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            results = self._postprocess(self._run(stacked))
        except Exception as exc:
            if len(arrays) == 1:
                return [(None, f"model {self.name!r} failed: {_short(exc)}")]
            return [self.compute([array])[0] for array in arrays]
        outcomes: list[Outcome] = []
        start = 0
        for array in arrays:
            stop = start + len(array)
            outcomes.append((results[start:stop], None))
            start = stop
        return outcomes

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        if self.batchable or len(batch) == 1:
            return self.session.run(self.output_names, {self.input_name: batch})
        per_row = [self.session.run(self.output_names, {self.input_name: batch[i : i + 1]}) for i in range(len(batch))]
        return [np.concatenate([row[k] for row in per_row]) for k in range(len(per_row[0]))]

    def _best_of_one(self, raw: np.ndarray) -> dict[str, Any]:
        """What :meth:`_postprocess` gives for one small row without softmax (same values, no numpy calls)."""
        scores: list[float] = raw.reshape(-1).tolist()
        if raw.dtype.kind == "f":
            # a sum of float32 scores cannot overflow a float64: it is finite iff every score is
            finite = math.isfinite(sum(scores)) if raw.dtype.itemsize <= 4 else all(map(math.isfinite, scores))
            if not finite:
                raise ValueError("the model produced NaN or infinite scores")
        best = scores.index(max(scores))  # the first of equal maxima, as argmax
        labels = self.config.labels
        return {
            "label": labels[best] if best < len(labels) else str(best),
            "class_index": best,
            "confidence": round(float(scores[best]), 6),
        }

    def _postprocess(self, outputs: list[np.ndarray]) -> list[dict[str, Any]]:
        if self.config.postprocess == "raw":
            rows = len(outputs[0])
            return [
                {"outputs": {name: out[i].tolist() for name, out in zip(self.output_names, outputs, strict=False)}}
                for i in range(rows)
            ]
        raw = outputs[self.output_index]
        if len(raw) == 1 and not self.config.softmax and 0 < raw.size <= _SMALL_ROW:
            return [self._best_of_one(raw)]
        scores = np.asarray(raw, dtype=np.float64)
        scores = scores.reshape(len(scores), -1)
        if self.config.softmax:
            scores = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores /= scores.sum(axis=1, keepdims=True)
        if not np.isfinite(scores).all():
            raise ValueError("the model produced NaN or infinite scores")
        best = scores.argmax(axis=1)
        confidence = scores[np.arange(len(best)), best]
        labels = self.config.labels
        return [
            {
                "label": labels[i] if i < len(labels) else str(i),
                "class_index": i,
                "confidence": round(c, 6),
            }
            for i, c in zip(best.tolist(), confidence.tolist(), strict=False)
        ]


#: A single row with at most this many scores is post-processed in plain Python: numpy's
#: per-call overhead on a 10-class row costs more than the row's own model run.
_SMALL_ROW = 64


def _load_session(path: Path, options: Any) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class ModelRegistry:
    """Declared models by name and task type; resolves paths and loads sessions."""

    def __init__(
        self,
        models: Sequence[ModelConfig],
        *,
        models_dir: str | Path = "",
        path_prefix: str = "/models/",
        session: SessionConfig | None = None,
    ) -> None:
        self.models_dir = (Path(models_dir) if models_dir else BUNDLED_MODELS_DIR).resolve()
        self.path_prefix = path_prefix
        self.session_config = session or SessionConfig()
        self._by_name: dict[str, ModelConfig] = {}
        self._by_task: dict[str, ModelConfig] = {}
        self._by_file: dict[Path, ModelConfig] = {}
        for model in models:
            if model.name in self._by_name:
                raise ModelError(f"model name {model.name!r} is declared twice")
            try:
                model.input_spec()
            except TensorError as exc:
                raise ModelError(f"model {model.name!r}: {exc}") from None
            file = self._inside(model.path)
            if file is None:
                raise ModelError(f"model {model.name!r}: path {model.path!r} is outside {self.models_dir}")
            self._by_name[model.name] = model
            self._by_file[file] = model
            for task_type in model.task_types:
                if task_type in self._by_task:
                    raise ModelError(
                        f"task type {task_type!r} is served by both {self._by_task[task_type].name!r} "
                        f"and {model.name!r}"
                    )
                self._by_task[task_type] = model
        self._loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, trio.Lock] = {name: trio.Lock() for name in self._by_name}
        self._resolved: dict[str, ModelConfig] = {}

    # -- declared models -------------------------------------------------------------------
    @property
    def task_types(self) -> list[str]:
        return sorted(self._by_task)

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def loaded(self, name: str) -> LoadedModel | None:
        return self._loaded.get(name)

    async def preload(self) -> None:
        """Load every model declared with ``preload = true``; raises the first failure."""
        for model in self._by_name.values():
            if model.preload:
                await self.load(model.name)

    async def load(self, name: str) -> LoadedModel:
        """The loaded model ``name``, loading it (in a thread, once) if needed."""
        model = self._loaded.get(name)
        if model is not None:
            return model
        async with self._locks[name]:
            model = self._loaded.get(name)
            if model is None:
                model = await trio.to_thread.run_sync(self._load_blocking, self._by_name[name])
                self._loaded[name] = model
        return model

    def _load_blocking(self, config: ModelConfig) -> LoadedModel:
        path = self._inside(config.path)
        assert path is not None  # checked in __init__
        if not path.is_file():
            raise ModelError(f"model {config.name!r}: file {config.path!r} does not exist in the models directory")
        try:
            session = _load_session(path, self.session_config.build())
        except Exception as exc:
            raise ModelError(
                f"model {config.name!r}: {config.path!r} is not a loadable ONNX model: {_short(exc)}"
            ) from None
        return LoadedModel(config, path, session)

    # -- routing ---------------------------------------------------------------------------
    def route_now(self, task_type: str, model_path: str) -> LoadedModel | None:
        """The loaded model serving this task if no file work is needed to find it
        (the path was resolved before and the model is loaded), else None: then
        :meth:`route`. Raises :class:`ModelError` for what is wrong either way."""
        if model_path:
            config = self._resolved.get(model_path)
            if config is None:
                return None
        else:
            config = self._for_task(task_type)
        _check_task_type(config, task_type)
        return self._loaded.get(config.name)

    async def route(self, task_type: str, model_path: str) -> LoadedModel:
        """The model serving this task, loaded. Raises :class:`ModelError` saying why not."""
        if model_path:
            config = self._resolved.get(model_path)
            if config is None:
                config = await trio.to_thread.run_sync(self._resolve_blocking, model_path)
                if len(self._resolved) >= 4096:
                    self._resolved.clear()
                self._resolved[model_path] = config
        else:
            config = self._for_task(task_type)
        _check_task_type(config, task_type)
        return await self.load(config.name)

    def _for_task(self, task_type: str) -> ModelConfig:
        found = self._by_task.get(task_type)
        if found is None:
            known = ", ".join(self.task_types) or "(none)"
            raise ModelError(f"unknown task_type {task_type!r}; known task types: {known}")
        return found

    def _inside(self, model_path: str) -> Path | None:
        """``model_path`` resolved inside the models directory, or ``None`` if it leads out."""
        if "\x00" in model_path:
            return None
        text = model_path
        if self.path_prefix and text.startswith(self.path_prefix):
            text = text[len(self.path_prefix) :]
        candidate = Path(text)
        target = candidate if candidate.is_absolute() else self.models_dir / candidate
        try:
            resolved = Path(os.path.realpath(target))
        except (OSError, ValueError):
            return None
        return resolved if resolved.is_relative_to(self.models_dir) and resolved != self.models_dir else None

    def _resolve_blocking(self, model_path: str) -> ModelConfig:
        if model_path in self._by_name:
            return self._by_name[model_path]
        path = self._inside(model_path)
        if path is None:
            raise ModelError(f"model_path {model_path!r} is outside the models directory; refused")
        declared = self._by_file.get(path)
        if declared is not None:
            return declared
        if not path.exists():
            raise ModelError(f"model_path {model_path!r} does not exist in the models directory")
        if path.suffix.lower() != ".onnx" or not path.is_file() or not _looks_like_onnx(path):
            raise ModelError(f"model_path {model_path!r} is not an ONNX model")
        declared_list = ", ".join(f"{m.name} ({m.path})" for m in self._by_name.values()) or "(none)"
        raise ModelError(f"model_path {model_path!r} is not a declared model; declared: {declared_list}")


def _check_task_type(config: ModelConfig, task_type: str) -> None:
    if config.task_types and task_type and task_type not in config.task_types:
        raise ModelError(f"model {config.name!r} serves task types {', '.join(config.task_types)}, not {task_type!r}")


def _looks_like_onnx(path: Path) -> bool:
    """Cheap sniff: an ONNX file is a protobuf ModelProto whose first field is ir_version (tag 0x08)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x08 and 0 < head[1] < 0x80
