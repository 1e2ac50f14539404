"""Transport security and admin lock-down, for real, with throwaway certificates made in the test.

* Search service TLS and mutual TLS (``ServiceSettings.tls_cert/tls_key/tls_client_ca``): a client
  trusting the right CA is served; a plaintext client, a client trusting another CA, a client with
  no certificate (under mTLS) and a client whose certificate another CA signed are all refused at
  the handshake, before any request reaches the engine.
* The service's channel to Triton over mutual TLS (Triton's ``--grpc-use-ssl*`` flags via
  ``TritonServerConfig.extra_args``; ``TritonEmbedder`` with ``ClientConfig(ssl=True, ...)``): a whole
  search works end to end over it; a plaintext client and a TLS client without a certificate are
  refused.
* Triton's admin protocols behind a key (``--grpc-restricted-protocol``): model-repository control
  (index, load, unload), statistics, trace and logging are refused without the key header and
  allowed with it, while inference, metadata and model config (what the search path needs) work
  without it. Triton 2.51 expects the header as ``triton-grpc-protocol-<key>``, not ``<key>``.

Source checks (no shell-outs with user input) and the dependency audit live in tests/security/.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as tritongrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from lenscope.client.api import search_pb2, search_pb2_grpc
from lenscope.client.index.bundle_store import BundleStore
from lenscope.client.search.engine import SearchEngine, SearchSettings, open_engine
from lenscope.client.service.server import ServiceStartError, serve
from lenscope.client.service.settings import ServiceSettings
from lenscope.client.triton.client import ClientConfig, TritonEmbedder
from lenscope.client.triton.server import TritonServer, start_server

x509 = pytest.importorskip("cryptography.x509",
                           reason="cryptography (in requirements.lock) makes the test certificates")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

pytestmark = pytest.mark.integration

N = 24
QUERY = search_pb2.SearchRequest(text="red t-shirt", top_k=3)
ADMIN_KEY, ADMIN_SECRET = "lenscope-admin", "s3cret-for-tests"
# Triton prefixes the configured key: the header a client must send.
ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_KEY}"


# --------------------------------------------------------------------------------------------------
# Throwaway PKI
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path

    @property
    def cert_bytes(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_bytes(self) -> bytes:
        return self.key.read_bytes()


class ThrowawayCA:
    """A self-signed CA (EC P-256, valid for a day) issuing server and client certificates."""

    def __init__(self, directory: Path, name: str):
        self.dir = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self._write(f"{name}-ca", self.cert, self.key)

    def issue(self, common_name: str, *, server: bool) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                  else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return self._write(f"{self.name}-{common_name}", builder.sign(self.key, hashes.SHA256()), key)

    def _write(self, stem: str, cert, key) -> Pem:
        cert_path, key_path = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_path.chmod(0o600)
        return Pem(cert_path, key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("pki")
    ca, rogue = ThrowawayCA(d, "lenscope"), ThrowawayCA(d, "rogue")
    return {
        "ca": ca, "server": ca.issue("search-service", server=True), "client": ca.issue("frontend", server=False),
        "triton": ca.issue("triton", server=True), "triton_client": ca.issue("search-to-triton", server=False),
        "rogue": rogue, "rogue_client": rogue.issue("intruder", server=False),
        "rogue_server": rogue.issue("impostor", server=True),
    }


# --------------------------------------------------------------------------------------------------
# An index to serve
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index_root(make_index) -> Path:
    return make_index(N, 9, 12)[1]


@pytest.fixture(scope="module")
def engine(triton, index_root: Path):
    eng = open_engine(triton.grpc_url, str(index_root), SearchSettings(default_deadline_s=10.0), triton_timeout_s=10.0)
    yield eng
    eng.close()


def _search(channel: grpc.Channel, timeout: float = 10.0) -> search_pb2.SearchResponse:
    return search_pb2_grpc.SearchServiceStub(channel).Search(QUERY, timeout=timeout)


def _refused(channel: grpc.Channel) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        _search(channel, timeout=5.0)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (err.value.code(), err.value.details())
    return err.value


def _tls_channel(port: int, root: bytes, client: Pem | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=client.key_bytes if client else None,
                                         certificate_chain=client.cert_bytes if client else None)
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


# --------------------------------------------------------------------------------------------------
# (a) The search service over TLS and mutual TLS
# --------------------------------------------------------------------------------------------------


def test_search_service_tls(engine, pki) -> None:
    server, ca, rogue = pki["server"], pki["ca"], pki["rogue"]
    settings = ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=10.0,
                               tls_cert=server.cert, tls_key=server.key)
    with serve(engine, settings) as running:
        with _tls_channel(running.port, ca.pem.cert_bytes) as ok:
            resp = _search(ok)
            assert resp.hits and resp.model_hash == engine.model_hash
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as plaintext:
            _refused(plaintext)  # a plaintext HTTP/2 client cannot talk to the TLS port
        with _tls_channel(running.port, rogue.pem.cert_bytes) as wrong_ca:
            _refused(wrong_ca)  # the client does not trust the server's issuer: handshake fails
    requests = running.metrics.registry.get_sample_value("lenscope_search_requests_total", {"code": "OK"})
    assert requests == 1.0, "refused connections must never reach the servicer"


def test_search_service_mutual_tls(engine, pki) -> None:
    server, ca = pki["server"], pki["ca"]
    settings = ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=10.0,
                               tls_cert=server.cert, tls_key=server.key, tls_client_ca=ca.pem.cert)
    with serve(engine, settings) as running:
        root = ca.pem.cert_bytes
        with _tls_channel(running.port, root, pki["client"]) as ok:
            assert _search(ok).hits
            health = health_pb2_grpc.HealthStub(ok).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        with _tls_channel(running.port, root) as anonymous:
            _refused(anonymous)  # no client certificate under mTLS
            with pytest.raises(grpc.RpcError):  # health and reflection sit behind the same handshake
                health_pb2_grpc.HealthStub(anonymous).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        with _tls_channel(running.port, root, pki["rogue_client"]) as intruder:
            _refused(intruder)  # a certificate the client CA did not sign
        with _tls_channel(running.port, root, pki["triton_client"]) as same_ca:
            assert _search(same_ca).hits  # any certificate of the client CA is admitted (the CA is the policy)
    ok_count = running.metrics.registry.get_sample_value("lenscope_search_requests_total", {"code": "OK"})
    assert ok_count == 2.0


def test_search_service_refuses_to_start_with_unusable_tls(engine, pki) -> None:
    """A certificate whose key does not match fails at start-up, not on the first client. (grpc only logs
    'Invalid private key'; the error says 'cannot listen ... Failed to bind', which names the symptom.)"""
    server, other = pki["server"], pki["triton"]
    bad = ServiceSettings(grpc_port=0, metrics_port=0, tls_cert=server.cert, tls_key=other.key)
    with pytest.raises(ServiceStartError, match="cannot listen"):
        serve(engine, bad).stop(0)


# --------------------------------------------------------------------------------------------------
# (b) The channel to Triton over mutual TLS
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_triton(exported_repo: Path, pki, tmp_path_factory: pytest.TempPathFactory) -> TritonServer:
    cert: Pem = pki["triton"]
    server = start_server(
        exported_repo, ready_timeout=120, log_path=tmp_path_factory.mktemp("triton-tls") / "tritonserver.log",
        extra_args=("--grpc-use-ssl=true", "--grpc-use-ssl-mutual=true", f"--grpc-server-cert={cert.cert}",
                    f"--grpc-server-key={cert.key}", f"--grpc-root-cert={pki['ca'].pem.cert}"),
    )
    yield server
    assert server.stop() == 0, server.log_tail(40)


def _tls_embedder(url: str, pki, client: Pem | None) -> TritonEmbedder:
    return TritonEmbedder(ClientConfig(
        url=url, timeout_s=10.0, retries=1, ssl=True, root_certificates=str(pki["ca"].pem.cert),
        private_key=str(client.key) if client else None, certificate_chain=str(client.cert) if client else None))


def test_search_over_mutual_tls_to_triton(tls_triton: TritonServer, index_root: Path, pki) -> None:
    embedder = _tls_embedder(tls_triton.grpc_url, pki, pki["triton_client"])
    bundle_hash = embedder.manifest()["model_hash"]  # model-config over mTLS
    engine = SearchEngine(embedder, BundleStore(index_root).open_current(expected_model_hash=bundle_hash),
                          SearchSettings(default_deadline_s=10.0))
    running = serve(engine, ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=10.0))
    try:
        assert engine.ready()  # health, model config and inference all over the mutual-TLS channel
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            image = search_pb2.SearchRequest(image=_png(), text="red t-shirt", top_k=3)
            for request in (QUERY, image):
                resp = search_pb2_grpc.SearchServiceStub(channel).Search(request, timeout=10)
                assert resp.hits and resp.model_hash == bundle_hash
    finally:
        running.stop(0.2)
        engine.close()
        embedder.close()


def test_triton_refuses_plaintext_and_anonymous_clients(tls_triton: TritonServer, pki) -> None:
    with tritongrpc.InferenceServerClient(tls_triton.grpc_url) as plaintext:
        with pytest.raises(InferenceServerException) as err:
            plaintext.is_server_ready(client_timeout=5)
        assert "UNAVAILABLE" in str(err.value.status())
    for who, client in (("no client certificate", None), ("a certificate of another CA", pki["rogue_client"])):
        embedder = _tls_embedder(tls_triton.grpc_url, pki, client)
        try:
            assert not embedder.is_ready(), who
            (res,) = embedder.embed_texts(["red t-shirt"], timeout_s=5)
            assert res.error is not None and res.error.status == "UNAVAILABLE", (who, res.error)
        finally:
            embedder.close()
    # and the search side refuses a Triton whose certificate it does not trust (an impostor)
    impostor = TritonEmbedder(ClientConfig(url=tls_triton.grpc_url, timeout_s=5.0, retries=1, ssl=True,
                                           root_certificates=str(pki["rogue"].pem.cert),
                                           private_key=str(pki["triton_client"].key),
                                           certificate_chain=str(pki["triton_client"].cert)))
    try:
        assert not impostor.is_ready()
    finally:
        impostor.close()


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# (c) Admin protocols behind a key
# --------------------------------------------------------------------------------------------------


RESTRICTED = "model-repository,statistics,trace,logging,shared-memory"


@pytest.fixture(scope="module")
def locked_triton(exported_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> TritonServer:
    server = start_server(
        exported_repo, ready_timeout=120, log_path=tmp_path_factory.mktemp("triton-locked") / "tritonserver.log",
        model_control_mode="explicit", load_models=("*",),
        grpc_restricted_protocol=f"{RESTRICTED}:{ADMIN_KEY}={ADMIN_SECRET}",
    )
    yield server
    assert server.stop() == 0, server.log_tail(40)


def _is_refused(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        call()
    assert "UNAVAILABLE" in str(err.value.status()) and "restricted" in err.value.message(), err.value
    return err.value


def test_admin_protocols_need_the_key(locked_triton: TritonServer) -> None:
    key = {ADMIN_HEADER: ADMIN_SECRET}
    with tritongrpc.InferenceServerClient(locked_triton.grpc_url) as admin:
        refusals = {
            "repository index": lambda h: admin.get_model_repository_index(headers=h),
            "unload": lambda h: admin.unload_model("embed_text", headers=h),
            "load": lambda h: admin.load_model("embed_text", headers=h),
            "statistics": lambda h: admin.get_inference_statistics(headers=h),
            "trace settings": lambda h: admin.get_trace_settings(headers=h),
            "log settings": lambda h: admin.get_log_settings(headers=h),
            "shared memory": lambda h: admin.get_system_shared_memory_status(headers=h),
        }
        for what, call in refusals.items():
            for headers in (None, {ADMIN_KEY: ADMIN_SECRET}, {ADMIN_HEADER: "wrong"}):
                err = _is_refused(lambda: call(headers))  # no key, the unprefixed key, a wrong value
                assert ADMIN_HEADER in err.message(), (what, err.message())
        # with the key: the repository can be listed and a model reloaded
        states = {m.name: m.state for m in admin.get_model_repository_index(headers=key).models}
        assert states.get("embed_text") == "READY"
        admin.load_model("embed_text", headers=key)  # explicit mode: a reload of the loaded model
        assert admin.is_model_ready("embed_text")
        assert admin.get_inference_statistics(headers=key).model_stats


def test_search_path_works_without_the_key(locked_triton: TritonServer, index_root: Path) -> None:
    """Inference, metadata, model config and health are not restricted: the search service needs no key."""
    engine = open_engine(locked_triton.grpc_url, str(index_root), SearchSettings(default_deadline_s=10.0),
                         triton_timeout_s=10.0)
    running = serve(engine, ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=10.0))
    try:
        assert engine.ready()
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            assert _search(channel).hits
    finally:
        running.stop(0.2)
        engine.close()


def test_admin_apis_are_locked_by_default(triton: TritonServer) -> None:
    """A server started with no lock options (the shared fixture) answers its admin APIs, over HTTP and
    gRPC, only with the per-server key; inference statistics and health stay open."""
    import urllib.error
    import urllib.request

    def http_logging(headers: dict[str, str]) -> int:
        req = urllib.request.Request(f"{triton.http_url}/v2/logging", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    key = triton.admin_headers()
    assert key, "the default server must carry an admin lock"
    assert http_logging({}) >= 400 and http_logging({"lenscope-triton-admin-key": "guess-guess"}) >= 400
    assert http_logging(triton.admin_headers("http")) == 200
    with tritongrpc.InferenceServerClient(triton.grpc_url) as client:
        _is_refused(lambda: client.get_log_settings())
        _is_refused(lambda: client.get_model_repository_index())
        assert client.get_log_settings(headers=key) is not None
        assert client.is_server_ready() and client.get_inference_statistics().model_stats is not None


# --------------------------------------------------------------------------------------------------
# Error details must not map the internal network for the caller
# --------------------------------------------------------------------------------------------------


def test_unavailable_details_do_not_disclose_triton_address(engine) -> None:
    from lenscope.client.triton.ports import free_port

    dead_port = free_port()  # nothing listens here: what a frontend sees while Triton is down
    live, engine.embedder = engine.embedder, TritonEmbedder(ClientConfig(url=f"127.0.0.1:{dead_port}", timeout_s=2.0))
    running = serve(engine, ServiceSettings(grpc_port=0, metrics_port=0, default_deadline_s=5.0))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            err = _refused(channel)
        assert "Triton" in err.details()
        assert str(dead_port) not in err.details(), err.details()
    finally:
        running.stop(0.2)
        engine.embedder.close()
        engine.embedder = live
