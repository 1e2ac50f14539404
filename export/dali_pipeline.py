"""The gpu profile's image preprocessing as a DALI pipeline, from the same ``PreprocessConfig`` as Pillow.

One definition, two placements: ``device="gpu"`` decodes with nvJPEG (``device="mixed"``) and resizes,
crops and normalises on the GPU; it is serialised into the repository as ``image_preprocess/1/model.dali``
for Triton's DALI backend. ``device="cpu"`` is the same graph on the CPU, which the ``nvidia-dali-cuda120``
wheel runs without a GPU: tests/export/test_dali_parity.py measures it against the Pillow path.

What it reproduces of ``lenscope.client.inputs.preprocess.preprocess`` (open_clip's eval transform):

- the resized size with torchvision's rounding (short side to ``image_size``, the long side
  ``int(size * long / short)``; or both sides for ``squash``), computed from the image's header shape;
- the resampling: Pillow's ``resize`` is a separable, antialiased convolution (its kernel widened by
  the downscale factor) with the cubic a=-0.5 / triangle kernel; DALI's ``fn.resize`` with
  ``antialias=True`` and ``INTERP_CUBIC`` / ``INTERP_LINEAR`` is the same family of filter; the pixel
  difference that remains is measured, not assumed;
- the centre crop offset ``int(round((d - size) / 2))`` (Python rounds half to even) as integer ops;
- ``(x / 255 - mean) / std`` as ``(x - 255 mean) / (255 std)`` in float32, CHW.

``resize_mode="longest"`` (pad to a square) is not expressed here: ``unsupported_reason`` says so and
the exporter keeps the python preprocessing for such a model (and says so).

``resolve_preprocess`` decides per export: DALI, or the python model with the reason logged and
recorded. Imports nvidia.dali lazily: it is an optional extra (``pip install -e .[dali]``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any, Literal

import numpy as np

from lenscope.client.core import contract
from lenscope.client.core.manifest import Manifest
from lenscope.client.core.modelspec import PreprocessConfig
from lenscope.export.repository import RepositorySettings, uses_dali

_log = logging.getLogger(__name__)

DALI_EXTRA = "pip install -e '.[dali]' (nvidia-dali-cuda120, ~420 MB)"


class DaliUnavailable(RuntimeError):
    """DALI cannot build this pipeline here; the message says why and what to do."""


def dali_missing() -> str | None:
    """Why DALI cannot be used in this environment (None: it can)."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as err:
        return f"nvidia-dali is not installed ({err}); install it with {DALI_EXTRA}"
    return None


def unsupported_reason(cfg: PreprocessConfig) -> str | None:
    if cfg.resize_mode == "longest":
        return "resize_mode 'longest' (pad to a square) has no DALI pipeline here"
    return None


def _interp(cfg: PreprocessConfig) -> Any:
    from nvidia.dali import types

    return types.INTERP_CUBIC if cfg.interpolation == "bicubic" else types.INTERP_LINEAR


def _round_half_even_half(d: Any) -> Any:
    """Python's ``round(d / 2)`` for a non-negative integer DataNode ``d``, with integer ops only."""
    k = d // 2
    odd = d - 2 * k
    return k + odd * (k - 2 * (k // 2))


def _graph(cfg: PreprocessConfig, device: Literal["gpu", "cpu"]) -> Any:
    """The pipeline body: encoded bytes -> float32 [3, S, S]. Called inside a pipeline context."""
    from nvidia.dali import fn, types

    s = cfg.image_size
    encoded = fn.external_source(device="cpu", name=contract.ENCODED_IMAGE, dtype=types.UINT8, ndim=1)
    # Shape from the header (EXIF orientation applied, as the decoder does), on the CPU: the sizes
    # below are argument inputs, which DALI takes from CPU tensors.
    shape = fn.peek_image_shape(encoded, dtype=types.INT32)
    h, w = shape[0], shape[1]
    images = fn.decoders.image(encoded, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB)
    if cfg.resize_mode == "squash":
        new_w, new_h = w * 0 + s, h * 0 + s
    else:  # shortest: torchvision Resize(int) rounding
        portrait = fn.cast(w <= h, dtype=types.INT32)
        new_w = portrait * s + (1 - portrait) * ((s * w) // h)
        new_h = portrait * ((s * h) // w) + (1 - portrait) * s
    images = fn.resize(images, resize_x=fn.cast(new_w, dtype=types.FLOAT), resize_y=fn.cast(new_h, dtype=types.FLOAT),
                       interp_type=_interp(cfg), antialias=True, dtype=types.UINT8)
    top, left = _round_half_even_half(new_h - s), _round_half_even_half(new_w - s)
    images = fn.slice(images, fn.stack(top, left), fn.constant(idata=[s, s], dtype=types.INT32),
                      axis_names="HW", normalized_anchor=False, normalized_shape=False)
    return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                    mean=[255.0 * m for m in cfg.mean], std=[255.0 * v for v in cfg.std])


def pipeline(cfg: PreprocessConfig, device: Literal["gpu", "cpu"], batch_size: int, num_threads: int = 2,
             device_id: int | None = 0) -> Any:
    """A DALI Pipeline (not built) for ``cfg`` on ``device`` (``device_id`` only matters for "gpu")."""
    why = dali_missing() or unsupported_reason(cfg)
    if why:
        raise DaliUnavailable(why)
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id if device == "gpu" else None,
                  prefetch_queue_depth=1)
    def _pipe():
        return _graph(cfg, device)

    return _pipe()


def serialize(cfg: PreprocessConfig, max_batch_size: int) -> bytes:
    """The GPU pipeline as the DALI backend's ``model.dali`` bytes, serialised without a GPU.

    A pipeline given a ``device_id`` asserts CUDA at construction, so the graph (its ``mixed``/``gpu``
    operators included) is serialised with ``device_id=None``: Triton's DALI backend creates the
    pipeline from these bytes with the model instance's own GPU, batch size and thread count
    (``daliCreatePipeline(..., max_batch_size, num_threads, device_id, ...)`` in dali_backend's
    src/dali_executor/dali_pipeline.h), not the serialised ones."""
    pipe = pipeline(cfg, "gpu", max_batch_size, device_id=None)
    try:
        return pipe.serialize()
    except Exception as err:  # noqa: BLE001 - any failure here means: keep the python preprocessing
        raise DaliUnavailable(f"DALI could not serialise the pipeline: {type(err).__name__}: {err}") from None


def run_cpu(cfg: PreprocessConfig, encoded: list[bytes], batch_size: int = 16) -> np.ndarray:
    """The same graph on the CPU: encoded images -> float32 [N, 3, S, S] (parity tests, CPU machines)."""
    if not encoded:
        return np.zeros((0, 3, cfg.image_size, cfg.image_size), np.float32)
    pipe = pipeline(cfg, "cpu", batch_size)
    pipe.build()
    out = []
    for i in range(0, len(encoded), batch_size):
        chunk = [np.frombuffer(b, dtype=np.uint8) for b in encoded[i:i + batch_size]]
        pipe.feed_input(contract.ENCODED_IMAGE, chunk)
        (batch,) = pipe.run()
        out.extend(np.asarray(batch[j]) for j in range(len(chunk)))
    return np.stack(out).astype(np.float32)


def resolve_preprocess(manifest: Manifest, s: RepositorySettings, dali_model: bytes | None = None,
                       log: Callable[[str], None] = _log.warning) -> tuple[Manifest, RepositorySettings, bytes | None]:
    """Decide the gpu image preprocessing once: DALI when asked for and buildable here, otherwise the
    python model, with the reason logged and recorded in the manifest (``extras["image_preprocess"]``)."""
    if s.profile != "gpu":
        return manifest, s, None
    note: dict[str, str] = {"requested": s.gpu_preprocess, "backend": s.gpu_preprocess}
    if uses_dali(s) and dali_model is None:
        try:
            dali_model = serialize(manifest.spec.preprocess, s.max_batch_size)
        except DaliUnavailable as err:
            log(f"gpu profile: image preprocessing stays in the python model (Pillow, on the CPU): {err}")
            s = s.model_copy(update={"gpu_preprocess": "python"})
            note |= {"backend": "python", "reason": str(err)}
    if uses_dali(s):
        try:
            note["dali_version"] = metadata.version("nvidia-dali-cuda120")
        except metadata.PackageNotFoundError:
            note["dali_version"] = "unknown"
    extras = dict(manifest.extras)
    if isinstance(extras.get("repository_settings"), dict):
        extras["repository_settings"] = {**extras["repository_settings"], "gpu_preprocess": s.gpu_preprocess}
    extras["image_preprocess"] = note
    return manifest.model_copy(update={"extras": extras}), s, dali_model if uses_dali(s) else None
