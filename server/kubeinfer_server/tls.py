"""Server TLS credentials that follow the certificate files on disk.

gRPC asks ``_Reloader.fetch`` at every new TLS handshake, and so does the REST
listener's SNI callback; when the files changed (a Kubernetes Secret volume
swaps them atomically) it hands back a new configuration. Open connections
keep the certificate they were made with, so a rotation drops nothing.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: str
    key: str
    client_ca: str | None = None  # set: client certificates are required and verified

    def paths(self) -> tuple[str, ...]:
        return (self.cert, self.key) + ((self.client_ca,) if self.client_ca else ())

    def check(self) -> None:
        """Raise ``TlsError`` unless the files exist, parse and the key matches the certificate."""
        for path in self.paths():
            if not os.path.isfile(path):
                raise TlsError(f"TLS file not found: {path}")
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert, self.key)
            if self.client_ca:
                context.load_verify_locations(self.client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"TLS files {', '.join(self.paths())} are not a usable certificate, key "
                           f"and CA: {exc}") from None


class TlsError(Exception):
    """The TLS files are missing, unreadable or do not belong together."""


class _Reloader(Generic[T]):
    """Builds a configuration from the files again when they changed since the last build."""

    def __init__(self, files: TlsFiles, build: Callable[[TlsFiles], T], listener: str) -> None:
        self.files = files
        self.build = build
        self.listener = listener
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> tuple:
        stamp = []
        for path in self.files.paths():
            st = os.stat(path)  # follows the ..data symlink of a Secret volume
            stamp.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamp)

    def fetch(self) -> T | None:
        """A configuration from the new files, or None when they did not change (or are not usable)."""
        try:
            stamp = self._read_stamp()
            if stamp == self._stamp:
                return None
            self.files.check()
            config = self.build(self.files)
        except (OSError, TlsError, ssl.SSLError) as exc:
            log.warning("Kept the current %s TLS certificate: the new files are not usable (%s)", self.listener, exc)
            return None
        self._stamp = stamp
        log.info("Reloaded TLS certificate from %s for %s", self.files.cert, self.listener)
        return config


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _grpc_configuration(files: TlsFiles):
    ca = _read(files.client_ca) if files.client_ca else None
    return grpc.ssl_server_certificate_configuration([(_read(files.key), _read(files.cert))], root_certificates=ca)


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """gRPC credentials; gRPC asks for a new configuration at every handshake."""
    files.check()
    reloader = _Reloader(files, _grpc_configuration, "gRPC")
    return grpc.dynamic_ssl_server_credentials(
        _grpc_configuration(files), reloader.fetch, require_client_authentication=files.client_ca is not None
    )


def _ssl_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key)
    if files.client_ca:
        context.load_verify_locations(files.client_ca)
        # A certificate, when presented, must verify; a call without one is refused by the
        # REST app (UNAUTHENTICATED) and logged, and health probes are answered.
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def rest_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """An ``ssl.SSLContext`` for the REST listener that follows the files as gRPC's credentials do.

    At each handshake (the SNI callback runs for every ClientHello, with or without a
    server name) the connection is switched to a context built from the current files.
    """
    files.check()
    reloader = _Reloader(files, _ssl_context, "REST")
    first = _ssl_context(files)
    current = [first]

    def on_client_hello(connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        fresh = reloader.fetch()
        if fresh is not None:
            current[0] = fresh
        if current[0] is not first:
            connection.context = current[0]

    first.sni_callback = on_client_hello
    return first
