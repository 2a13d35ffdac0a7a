"""A real S3-compatible object store on loopback, for the tests: SeaweedFS's ``weed server``.

``S3Server`` runs SeaweedFS's master, volume server, filer and S3 gateway in one ``weed
server`` process bound to 127.0.0.1, every port chosen free (``devkit.ports``), its data,
configuration and log in a temporary directory. It knows one identity, a random access
key pair allowed every action: a request without that identity's signature is refused,
so every bucket is private. ``env()`` is what a client needs to reach it: the variables
that botocore and every AWS SDK read (the endpoint too). ``stop()`` (or leaving the
``with`` block) sends SIGTERM, then SIGKILL after a deadline, and removes the directory.

The binary comes from ``make s3-build`` (hack/build-seaweedfs.sh); ``weed_binary()``
says where. The S3 calls go through botocore, which the product's ``s3`` extra installs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from devkit.ports import free_port
from devkit.processes import spawn, terminate
from devkit.waiting import wait_for

HACK = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
REGION = "us-east-1"
# Each part listens on an HTTP and a gRPC port. weed's default gRPC port is the HTTP port
# + 10000, which a free port can push past 65535 or onto someone else's: both are given.
PARTS = ("master", "volume", "filer", "s3")
PROBE_BUCKET = "kubeinfer-readiness-probe"  # made and removed again by wait_ready
# On SIGTERM weed stops serving at once but takes about 15 s to exit (its S3 gateway retries
# the stopped filer); the data is thrown away, so it is killed after this.
STOP_GRACE_S = 3.0


def pinned_version(versions: Path = HACK / "versions.env") -> str:
    for line in versions.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "SEAWEEDFS_VERSION":
            return value.strip()
    raise KeyError(f"SEAWEEDFS_VERSION is not in {versions}")


def weed_binary() -> Path:
    """Where ``make s3-build`` puts weed (whether built or not); must match hack/build-seaweedfs.sh."""
    base = Path(os.environ.get("KUBEINFER_CACHE", Path.home() / ".cache" / "kubeinfer"))
    return base / "seaweedfs" / pinned_version() / "weed"


class S3ServerError(RuntimeError):
    """weed exited or did not answer in time; the message ends with its log's tail."""


class S3Server:
    """One ``weed server`` with an S3 gateway; ``start()`` returns once it serves reads and writes."""

    def __init__(self, weed: Path | None = None, host: str = HOST) -> None:
        """``host``: the address it listens on (loopback; the real node's bridge address for pods)."""
        self.weed = weed or weed_binary()
        self.host = host
        self.access_key = "KI" + secrets.token_hex(9).upper()  # 20 characters, as AWS's are
        self.secret_key = secrets.token_urlsafe(30)
        ports = _distinct_free_ports(2 * len(PARTS), host)
        self.ports = {part: (ports[2 * i], ports[2 * i + 1]) for i, part in enumerate(PARTS)}
        self.workdir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._client = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['s3'][0]}"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "not started"
        return self.workdir / "weed.log"

    def start(self, timeout: float = 60.0) -> S3Server:
        self.workdir = Path(tempfile.mkdtemp(prefix="kubeinfer-s3-"))
        (self.workdir / "data").mkdir()
        config = self.workdir / "identities.json"
        config.write_text(json.dumps(self._identities()))
        config.chmod(0o600)
        self.proc = spawn(self._argv(config), self.log_path, cwd=self.workdir, tie_to_parent=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _identities(self) -> dict:
        """weed's -s3.config: the one identity; there is no anonymous one, so nothing is public."""
        credentials = [{"accessKey": self.access_key, "secretKey": self.secret_key}]
        actions = ["Admin", "Read", "List", "Tagging", "Write"]
        return {"identities": [{"name": "admin", "credentials": credentials, "actions": actions}]}

    def _argv(self, config: Path) -> list[str]:
        assert self.workdir is not None
        port = {part: f"-{part}.port={http}" for part, (http, _) in self.ports.items()}
        grpc = {part: f"-{part}.port.grpc={g}" for part, (_, g) in self.ports.items()}
        return [
            # glog's files would go to /tmp: its output goes to weed.log through stderr only.
            str(self.weed), "-logtostderr", "server",
            f"-ip={self.host}", f"-ip.bind={self.host}", f"-dir={self.workdir / 'data'}",
            port["master"], grpc["master"], "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
            # The volume server waits -volume.preStopSeconds (10) on SIGTERM before it stops. Each
            # bucket grows 7 volumes at its first large object: weed's default of 8 volumes in all
            # leaves the second bucket with one and the third with none ("No writable volumes").
            port["volume"], grpc["volume"], "-volume.preStopSeconds=0", "-volume.max=64",
            "-filer", port["filer"], grpc["filer"], f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3", port["s3"], grpc["s3"], f"-s3.config={config}", f"-s3.localSocket={self.workdir / 's3.sock'}",
            # A PUT into a missing bucket fails, as on AWS, instead of creating it; no extra listeners.
            "-s3.autoCreateBucket=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        ]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until a signed write and read round trip works (the gateway answers before the
        filer and the volume server are ready), or ``S3ServerError`` with weed's log tail."""
        try:
            wait_for(self._round_trip, timeout=timeout, what="weed's S3 gateway", interval=0.25)
        except AssertionError as exc:
            raise S3ServerError(f"{exc}; last weed log lines:\n{self.log_tail()}") from None
        self.client().delete_object(Bucket=PROBE_BUCKET, Key="probe")
        self.client().delete_bucket(Bucket=PROBE_BUCKET)

    def _round_trip(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise S3ServerError(f"weed exited with {self.proc.returncode}; last log lines:\n{self.log_tail()}")
        try:
            if PROBE_BUCKET not in self.buckets():
                self.client().create_bucket(Bucket=PROBE_BUCKET)
            self.put(PROBE_BUCKET, "probe", b"ok")
            return self.client().get_object(Bucket=PROBE_BUCKET, Key="probe")["Body"].read() == b"ok"
        except (BotoCoreError, ClientError):
            return False

    def client(self):
        """A botocore S3 client with the admin keys (path-style: the endpoint is an address)."""
        if self._client is None:
            import botocore.session
            from botocore.config import Config

            config = Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=30,
                            retries={"max_attempts": 1})
            self._client = botocore.session.get_session().create_client(
                "s3", endpoint_url=self.endpoint, region_name=REGION, config=config,
                aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)
        return self._client

    def buckets(self) -> list[str]:
        return [b["Name"] for b in self.client().list_buckets().get("Buckets", [])]

    def create_bucket(self, name: str) -> str:
        """A private bucket (the only kind this server has); returns its name."""
        self.client().create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, data: bytes) -> str:
        """Store ``data`` at ``bucket/key``; returns its ``s3://`` URL."""
        self.client().put_object(Bucket=bucket, Key=key, Body=data)
        return self.url(bucket, key)

    @staticmethod
    def url(bucket: str, key: str) -> str:
        return f"s3://{bucket}/{key}"

    def env(self) -> dict[str, str]:
        """What a client (the product's fetch, any AWS SDK) needs to reach this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION}

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no weed log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, SIGKILL after ``STOP_GRACE_S``; then remove the data and weed's sockets."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None:
            terminate(self.proc, grace=STOP_GRACE_S)
            self.proc = None
        for part, (_, grpc_port) in self.ports.items():  # weed puts these in /tmp whatever -dir says
            Path(f"/tmp/seaweedfs-{part}-grpc-{grpc_port}.sock").unlink(missing_ok=True)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _distinct_free_ports(count: int, host: str) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports
