"""TLS options of the serve commands map onto Triton's real gRPC SSL flags."""

from pathlib import Path

import pytest

from lenscope.client.cli.serve import _grpc_tls_args


def test_no_tls_by_default() -> None:
    assert _grpc_tls_args(None, None, None) == ()


def test_tls_and_mutual_tls_flags() -> None:
    cert, key, ca = Path("/c.pem"), Path("/k.pem"), Path("/ca.pem")
    assert _grpc_tls_args(cert, key, None) == (
        "--grpc-use-ssl=true", "--grpc-server-cert=/c.pem", "--grpc-server-key=/k.pem")
    assert _grpc_tls_args(cert, key, ca)[-2:] == ("--grpc-use-ssl-mutual=true", "--grpc-root-cert=/ca.pem")


def test_cert_without_key_is_refused() -> None:
    with pytest.raises(ValueError, match="go together"):
        _grpc_tls_args(Path("/c.pem"), None, None)
