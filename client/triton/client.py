"""gRPC client for the Triton ensembles: the only module that imports tritonclient.

Each input is sent as its own request so that one bad image fails alone; Triton's dynamic batcher
puts concurrent requests back into one batch on the server. Deadlines are per call; only
UNAVAILABLE (server down or restarting) is retried, because every other failure would fail again.

Load spread over Triton replicas happens here, on the client: the channel balances round-robin over
every address its target resolves to (`dns:///triton-headless:8001` in Kubernetes: one address per
ready pod; a comma list of ip:port in tests), with keepalive so a dead peer is noticed, and the
channel is replaced every `max_connection_age_s` so the name is resolved again and new pods get
traffic (one HTTP/2 connection per pod otherwise lives forever and a scaled-out pod stays idle).
A replica that dies is dropped from the rotation by gRPC; the calls it failed are UNAVAILABLE and
retried within their deadline on the others.
"""

from __future__ import annotations

import ipaddress
import json
import threading
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
    keepalive_s: float = 30.0  # HTTP/2 ping interval while calls are in flight
    max_connection_age_s: float | None = None  # replace the channel (re-resolve, reconnect) this often


def grpc_target(url: str) -> str:
    """The gRPC target for a Triton address: `host:port` and `dns:///name:port` as given (both resolved
    by gRPC's DNS resolver, every address used); a comma list of ip:port becomes gRPC's static
    `ipv4:`/`ipv6:` list. A comma list of names is refused: use one name that resolves to them all."""
    if "," not in url:
        return url.strip()
    parts = [p.strip() for p in url.split(",") if p.strip()]
    families = set()
    for part in parts:
        host, sep, port = part.rpartition(":")
        host = host.strip("[]")
        if not sep or not port.isdigit():
            raise ValueError(f"Triton address {part!r} in the list {url!r} has no port")
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(f"Triton address {part!r} in the list {url!r} is not ip:port; list addresses, or "
                             "give one name (dns:///name:port) that resolves to every replica") from None
    if len(families) != 1:
        raise ValueError(f"Triton address list {url!r} mixes IPv4 and IPv6")
    return f"ipv{families.pop()}:" + ",".join(parts)


def _channel_args(config: "ClientConfig") -> list[tuple[str, int | str]]:
    """Round-robin over every resolved address, keepalive, and a capped reconnect backoff (gRPC's
    default grows to 120 s: after a Triton restart the channel would stay down long after the server
    is back; capped, recovery takes about a second)."""
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", config.max_reconnect_backoff_ms),
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.keepalive_time_ms", int(config.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.dns_min_time_between_resolutions_ms", 1000),
    ]


class TritonEmbedder:
    """Embeds images and texts through the `embed_image` / `embed_text` ensembles."""

    def __init__(self, config: ClientConfig = ClientConfig()):
        self.config = config
        self._target = grpc_target(config.url)
        self._channel_lock = threading.Lock()
        self._current = self._new_client()
        self._born = time.monotonic()
        self._retired: grpcclient.InferenceServerClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=config.max_concurrency, thread_name_prefix="triton")
        self._attr_outputs: list[str] | None = None
        # One policy for every call: short jittered waits (a restarting Triton is back in about a
        # second, see _channel_args), the budget of each call being its own deadline.
        self._retry = RetryPolicy(attempts=config.retries, base_delay_s=0.1, max_delay_s=1.0)

    def _new_client(self) -> grpcclient.InferenceServerClient:
        c = self.config
        return grpcclient.InferenceServerClient(
            url=self._target, ssl=c.ssl, root_certificates=c.root_certificates, private_key=c.private_key,
            certificate_chain=c.certificate_chain, channel_args=_channel_args(c),
        )

    @property
    def _client(self) -> grpcclient.InferenceServerClient:
        """The live client; past `max_connection_age_s` a new one (new channel: the name is resolved
        again, connections go to every current replica) replaces it. The replaced one is closed at the
        next replacement, an age later, so calls still running on it finish."""
        age = self.config.max_connection_age_s
        if age is None or time.monotonic() - self._born < age:
            return self._current
        with self._channel_lock:
            if time.monotonic() - self._born >= age:
                if self._retired is not None:
                    self._retired.close()
                self._retired, self._current = self._current, self._new_client()
                self._born = time.monotonic()
            return self._current

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._channel_lock:
            for client in (self._current, self._retired):
                if client is not None:
                    client.close()

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

    def attribute_outputs(self, timeout_s: float | None = None) -> list[str]:
        if self._attr_outputs is None:
            timeout = self.config.timeout_s if timeout_s is None else timeout_s
            meta = self._call(lambda: self._client.get_model_metadata(contract.EMBED_IMAGE, as_json=True,
                                                                      client_timeout=timeout), budget_s=timeout)
            self._attr_outputs = [o["name"] for o in meta["outputs"] if o["name"].startswith(contract.ATTR_PREFIX)]
        return self._attr_outputs

    # -- inference -------------------------------------------------------------------------
    def embed_images(self, images: list[bytes], timeout_s: float | None = None) -> list[EmbedResult]:
        attrs = self.attribute_outputs(timeout_s)
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
