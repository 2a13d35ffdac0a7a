"""``kubeinfer-server serve`` refuses a bad start quickly and says why.

Covers:
- a model file that is not ONNX, and a missing model file: non-zero exit well
  within the deadline, one error naming the file, no traceback;
- ``--allowed-clients`` without ``--tls-client-ca`` (with no TLS, and with
  server-only TLS): a usage error naming both flags;
- ``--model`` without ``=``: a usage error showing the bad value;
- a missing TLS certificate file, and a key that does not match its
  certificate: exit 1 naming the problem, no traceback.
"""

from __future__ import annotations

import os

from support.serverproc import run_cli

DEADLINE_S = 30  # far above a normal failed start; a hang fails the test with TimeoutExpired
LOOPBACK = ("--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0")


def serve(*args: str):
    return run_cli("serve", *LOOPBACK, *args, timeout=DEADLINE_S)


def assert_could_not_start(result, path: str) -> None:
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Could not start" in errors[0] and path in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert "Serving" not in result.stderr


def assert_usage_error(result, *needles: str) -> None:
    assert result.returncode == 2
    assert result.stderr.startswith("usage: kubeinfer-server")
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kubeinfer-server serve: error: ")
    for needle in needles:
        assert needle in last, result.stderr


def test_model_that_is_not_onnx(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(os.urandom(4096))
    assert_could_not_start(serve("--model", f"m={path}"), str(path))


def test_missing_model_file(tmp_path):
    path = str(tmp_path / "absent" / "model.onnx")
    assert_could_not_start(serve("--model", f"m={path}"), path)


def test_allowed_clients_needs_client_ca(tmp_path):
    model = str(tmp_path / "model.onnx")  # never opened: the flags are checked first
    assert_usage_error(serve("--model", f"m={model}", "--allowed-clients", "checkout"),
                       "--allowed-clients", "--tls-client-ca")
    server_only_tls = ("--tls-cert", str(tmp_path / "tls.crt"), "--tls-key", str(tmp_path / "tls.key"))
    assert_usage_error(serve("--model", f"m={model}", *server_only_tls, "--allowed-clients", "checkout"),
                       "--allowed-clients", "--tls-client-ca")


def test_model_without_equals_sign(tmp_path):
    assert_usage_error(serve("--model", str(tmp_path / "model.onnx")), "--model", "NAME=PATH",
                       repr(str(tmp_path / "model.onnx")))


def _tls_start(tmp_path, cert: str, key: str):
    from devkit.models import linear

    model = linear(tmp_path / "linear.onnx")
    return serve(f"--model=m={model}", f"--tls-cert={cert}", f"--tls-key={key}")


def test_missing_tls_file(tmp_path):
    from devkit.x509 import make_ca, server_cert

    cert = server_cert(make_ca())
    cert_path, key_path = cert.write(tmp_path, "server")
    missing = str(tmp_path / "absent.key")
    assert_could_not_start(_tls_start(tmp_path, str(cert_path), missing), missing)


def test_key_that_does_not_match_the_certificate(tmp_path):
    from devkit.x509 import make_ca, server_cert

    ca = make_ca()
    cert_path, _ = server_cert(ca).write(tmp_path, "one")
    _, other_key = server_cert(ca).write(tmp_path, "two")
    result = _tls_start(tmp_path, str(cert_path), str(other_key))
    assert_could_not_start(result, str(cert_path))
    assert "not a usable certificate" in result.stderr
