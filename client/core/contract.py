"""The tensor contract: model names, tensor names, dtypes and shapes, in one torch-free place.

The exporter, the repository writer, the Triton python models, the client and the tests all import
this module, so a renamed tensor breaks loudly everywhere at once instead of drifting.
Dims exclude the batch dimension (every model batches).
"""

from __future__ import annotations

from dataclasses import dataclass

# Model names in the repository.
IMAGE_PREPROCESS = "image_preprocess"
IMAGE_ENCODER = "image_encoder"
ATTRIBUTE_HEADS = "attribute_heads"
TEXT_TOKENIZER = "text_tokenizer"
TEXT_ENCODER = "text_encoder"
EMBED_IMAGE = "embed_image"
EMBED_TEXT = "embed_text"
ENSEMBLES = (EMBED_IMAGE, EMBED_TEXT)
ALL_MODELS = (IMAGE_PREPROCESS, IMAGE_ENCODER, ATTRIBUTE_HEADS, TEXT_TOKENIZER, TEXT_ENCODER, *ENSEMBLES)
# gpu profile with DALI preprocessing only: the python step in front of the DALI ``image_preprocess``
# (header checks per request, BYTES -> UINT8 as the DALI backend needs; see inputs/gate.py).
IMAGE_GATE = "image_gate"

# Tensor names.
IMAGE = "IMAGE"
PIXEL_VALUES = "PIXEL_VALUES"
ENCODED_IMAGE = "ENCODED_IMAGE"
EMBEDDING = "EMBEDDING"
TEXT = "TEXT"
INPUT_IDS = "INPUT_IDS"
ATTR_PREFIX = "ATTR_"

# Files.
MANIFEST_FILE = "export_manifest.json"
IMAGE_ONNX = "image_encoder.onnx"
TEXT_ONNX = "text_encoder.onnx"
HEADS_ONNX = "attribute_heads.onnx"
BPE_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
TRT_PLAN = "model.plan"
DALI_MODEL = "model.dali"


def attribute_output(attribute: str) -> str:
    """Output tensor name for an attribute head: one FP32 probability vector per attribute."""
    return ATTR_PREFIX + attribute.upper()


def attribute_label_file(attribute: str) -> str:
    return f"labels_{attribute}.txt"


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton data type name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]  # without the batch dimension

    @property
    def numpy_dtype(self) -> str:
        return _NUMPY[self.dtype]

    @property
    def wire_dtype(self) -> str:
        """The dtype name the Triton client API uses ("FP32", "BYTES", ...)."""
        return "BYTES" if self.dtype == "TYPE_STRING" else self.dtype.removeprefix("TYPE_")


_NUMPY = {"TYPE_UINT8": "uint8", "TYPE_FP32": "float32", "TYPE_FP16": "float16", "TYPE_INT64": "int64", "TYPE_STRING": "object"}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


@dataclass(frozen=True)
class Dimensions:
    """The numbers a model spec fixes; everything else in the contract follows from them."""

    image_size: int
    embed_dim: int
    context_length: int
    attributes: tuple[tuple[str, int], ...]  # (name, number of labels)


def image_bytes() -> Tensor:
    return Tensor(IMAGE, "TYPE_STRING", (1,))


def encoded_image() -> Tensor:
    """One encoded image as raw bytes of any length (the DALI backend's input type)."""
    return Tensor(ENCODED_IMAGE, "TYPE_UINT8", (-1,))


def text_bytes() -> Tensor:
    return Tensor(TEXT, "TYPE_STRING", (1,))


def pixel_values(d: Dimensions) -> Tensor:
    return Tensor(PIXEL_VALUES, "TYPE_FP32", (3, d.image_size, d.image_size))


def embedding(d: Dimensions) -> Tensor:
    return Tensor(EMBEDDING, "TYPE_FP32", (d.embed_dim,))


def input_ids(d: Dimensions) -> Tensor:
    return Tensor(INPUT_IDS, "TYPE_INT64", (d.context_length,))


def attribute_outputs(d: Dimensions) -> tuple[Tensor, ...]:
    return tuple(Tensor(attribute_output(name), "TYPE_FP32", (n,)) for name, n in d.attributes)


def signatures(d: Dimensions) -> dict[str, Signature]:
    """Every model's inputs and outputs for the given dimensions."""
    attrs = attribute_outputs(d)
    return {
        IMAGE_PREPROCESS: Signature((image_bytes(),), (pixel_values(d),)),
        IMAGE_ENCODER: Signature((pixel_values(d),), (embedding(d),)),
        ATTRIBUTE_HEADS: Signature((embedding(d),), attrs),
        TEXT_TOKENIZER: Signature((text_bytes(),), (input_ids(d),)),
        TEXT_ENCODER: Signature((input_ids(d),), (embedding(d),)),
        EMBED_IMAGE: Signature((image_bytes(),), (embedding(d), *attrs)),
        EMBED_TEXT: Signature((text_bytes(),), (embedding(d),)),
    }


def dali_signatures(d: Dimensions) -> dict[str, Signature]:
    """The image path of the gpu profile with DALI: gate (python) -> image_preprocess (DALI)."""
    return {
        IMAGE_GATE: Signature((image_bytes(),), (encoded_image(),)),
        IMAGE_PREPROCESS: Signature((encoded_image(),), (pixel_values(d),)),
    }
