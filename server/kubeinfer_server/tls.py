"""Server TLS credentials that follow the certificate files on disk.

gRPC asks ``_Reloader.fetch`` at every new TLS handshake; when the files changed
(a Kubernetes Secret volume swaps them atomically) it hands back a new
configuration. Open connections keep the certificate they were made with, so
a rotation drops nothing.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

import grpc

log = logging.getLogger(__name__)


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


class _Reloader:
    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> tuple:
        stamp = []
        for path in self.files.paths():
            st = os.stat(path)  # follows the ..data symlink of a Secret volume
            stamp.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamp)

    def configuration(self):
        def read(path):
            with open(path, "rb") as f:
                return f.read()

        ca = read(self.files.client_ca) if self.files.client_ca else None
        return grpc.ssl_server_certificate_configuration(
            [(read(self.files.key), read(self.files.cert))], root_certificates=ca
        )

    def fetch(self):
        try:
            stamp = self._read_stamp()
            if stamp == self._stamp:
                return None
            self.files.check()
            config = self.configuration()
        except (OSError, TlsError) as exc:
            log.warning("Kept the current TLS certificate: the new files are not usable (%s)", exc)
            return None
        self._stamp = stamp
        log.info("Reloaded TLS certificate from %s", self.files.cert)
        return config


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    files.check()
    reloader = _Reloader(files)
    return grpc.dynamic_ssl_server_credentials(
        reloader.configuration(), reloader.fetch, require_client_authentication=files.client_ca is not None
    )
