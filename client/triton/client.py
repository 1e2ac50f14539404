"""gRPC client for the Triton ensembles: the only module that imports tritonclient.

Each input is sent as its own request so that one bad image fails alone; Triton's dynamic batcher
puts concurrent requests back into one batch on the server. Deadlines are per call; only
UNAVAILABLE (server down or restarting) is retried, because every other failure would fail again.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
from tenacity import retry_if_exception
from tritonclient.utils import InferenceServerException

from lenscope.client.core import contract
from lenscope.client.core.retry import RetryPolicy


class TritonError(RuntimeError):
    """A failed Triton call, with the gRPC status name (e.g. UNAVAILABLE, DEADLINE_EXCEEDED)."""

    def __init__(self, status: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass
class EmbedResult:
    """One input's outcome: an embedding (+ attribute probabilities for images) or an error."""

    embedding: np.ndarray | None = None
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    error: TritonError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _status(err: InferenceServerException) -> str:
    s = err.status() or "UNKNOWN"
    return s.removeprefix("StatusCode.")


def _to_error(err: InferenceServerException) -> TritonError:
    return TritonError(_status(err), err.message() or str(err))


def _retryable(err: BaseException) -> bool:
    return isinstance(err, TritonError) and err.status == "UNAVAILABLE"


@dataclass(frozen=True)
class ClientConfig:
    url: str = "127.0.0.1:8001"
    timeout_s: float = 2.0  # per-call deadline
    retries: int = 3  # attempts on UNAVAILABLE only, within the call's deadline
    max_concurrency: int = 16  # pool threads for fan-out; the search service sizes it from max_inflight
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    max_reconnect_backoff_ms: int = 1000
    max_message_bytes: int = 64 * 1024 * 1024


def _channel_args(config: "ClientConfig") -> list[tuple[str, int]]:
    """gRPC's default reconnect backoff grows to 120 s: after a Triton restart the channel would
    stay down long after the server is back. Cap it so recovery takes about a second."""
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", config.max_reconnect_backoff_ms),
    ]


class TritonEmbedder:
    """Embeds images and texts through the `embed_image` / `embed_text` ensembles."""

    def __init__(self, config: ClientConfig = ClientConfig()):
        self.config = config
        self._client = grpcclient.InferenceServerClient(
            url=config.url,
            ssl=config.ssl,
            root_certificates=config.root_certificates,
            private_key=config.private_key,
            certificate_chain=config.certificate_chain,
            channel_args=_channel_args(config),
        )
        self._pool = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="triton")
        self._attr_outputs: list[str] | None = None
        # One policy for every call: short jittered waits (a restarting Triton is back in about a
        # second, see _channel_args), the budget of each call being its own deadline.
        self._retry = RetryPolicy(attempts=config.retries, base_delay_s=0.1, max_delay_s=1.0)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> "TritonEmbedder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- server state ----------------------------------------------------------------------
    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready(client_timeout=self.config.timeout_s))
        except InferenceServerException:
            return False

    def manifest(self, timeout_s: float | None = None) -> dict:
        """The export manifest the server's ensemble carries (config parameter `manifest`)."""
        timeout = self.config.timeout_s if timeout_s is None else timeout_s
        cfg = self._call(lambda: self._client.get_model_config(contract.EMBED_IMAGE, as_json=True,
                                                               client_timeout=timeout), budget_s=timeout)
        params = cfg["config"].get("parameters", {})
        raw = params.get("manifest", {}).get("string_value")
        if not raw:
            raise TritonError("FAILED_PRECONDITION", f"{contract.EMBED_IMAGE} carries no manifest parameter")
        return json.loads(raw)

    def attribute_outputs(self) -> list[str]:
        if self._attr_outputs is None:
            meta = self._call(lambda: self._client.get_model_metadata(contract.EMBED_IMAGE, as_json=True,
                                                                      client_timeout=self.config.timeout_s))
            self._attr_outputs = [o["name"] for o in meta["outputs"] if o["name"].startswith(contract.ATTR_PREFIX)]
        return self._attr_outputs

    # -- inference -------------------------------------------------------------------------
    def embed_images(self, images: list[bytes], timeout_s: float | None = None) -> list[EmbedResult]:
        attrs = self.attribute_outputs()
        outputs = [contract.EMBEDDING, *attrs]
        return self._fan_out(contract.EMBED_IMAGE, contract.IMAGE, images, outputs, timeout_s)

    def embed_texts(self, texts: list[str], timeout_s: float | None = None) -> list[EmbedResult]:
        data = [t.encode("utf-8") for t in texts]
        return self._fan_out(contract.EMBED_TEXT, contract.TEXT, data, [contract.EMBEDDING], timeout_s)

    def embed_image_and_text(self, image: bytes, text: str,
                             timeout_s: float | None = None) -> tuple[EmbedResult, EmbedResult]:
        """A photo+text query: the image on the client pool and the text on the calling thread, at the
        same time, so one query holds at most one pool thread (the pool is sized from the service's
        max_inflight, see ``service/servicer.py``)."""
        outputs = [contract.EMBEDDING, *self.attribute_outputs()]
        timeout = timeout_s if timeout_s is not None else self.config.timeout_s
        image_f = self._pool.submit(self._infer_one, contract.EMBED_IMAGE, contract.IMAGE, image, outputs, timeout)
        text_r = self._infer_one(contract.EMBED_TEXT, contract.TEXT, text.encode("utf-8"), [contract.EMBEDDING], timeout)
        return image_f.result(), text_r

    def _fan_out(self, model: str, input_name: str, items: list[bytes], outputs: list[str],
                 timeout_s: float | None) -> list[EmbedResult]:
        timeout = timeout_s if timeout_s is not None else self.config.timeout_s
        if len(items) == 1:  # one query: no thread hop
            return [self._infer_one(model, input_name, items[0], outputs, timeout)]
        futures = [self._pool.submit(self._infer_one, model, input_name, item, outputs, timeout) for item in items]
        return [f.result() for f in futures]

    def _infer_one(self, model: str, input_name: str, item: bytes, outputs: list[str], timeout: float) -> EmbedResult:
        inp = grpcclient.InferInput(input_name, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[item]], dtype=object))
        req_out = [grpcclient.InferRequestedOutput(o) for o in outputs]
        try:
            end = time.monotonic() + timeout  # retries share one deadline, never extend it
            res = self._call(lambda: self._client.infer(model, [inp], outputs=req_out,
                                                        client_timeout=max(0.001, end - time.monotonic())),
                             budget_s=timeout)
        except TritonError as err:
            return EmbedResult(error=err)
        emb = res.as_numpy(contract.EMBEDDING)[0]
        attrs = {o: res.as_numpy(o)[0] for o in outputs if o != contract.EMBEDDING}
        return EmbedResult(embedding=emb, attributes=attrs)

    def _call(self, fn, budget_s: float | None = None):
        """Run fn, retrying UNAVAILABLE on the client's RetryPolicy, never past `budget_s` (the deadline)."""

        def attempt():
            try:
                return fn()
            except InferenceServerException as err:
                raise _to_error(err) from None

        return self._retry.retrying(retry_if_exception(_retryable), budget_s=budget_s)(attempt)
