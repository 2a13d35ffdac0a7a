"""A model optimized in place, as a pod's init step does it, then served: which file answers, and the
compact report Kubernetes keeps.

Covers:
- ``optimize MODEL MODEL --in-place`` of the trained classifier (devkit.classifier) replaces the file
  and leaves its record beside it; a real ``kubeinfer-server serve`` of it reports the file's sha256 and
  the method in ModelMetadata's parameters (gRPC and REST), in ModelConfig's (what tritonclient reads)
  and as labels of ``kubeinfer_model_info``;
- a rejected candidate with ``--exit-zero-on-reject``: exit 0, the file left as it was, and the server
  reports the original's sha256 and method ``none``; a record left beside a file since replaced says
  nothing (``none``);
- validation rows in a private bucket of a real S3 server, read with the store's keys from the
  environment (as the pod's envFrom gives them); a wrong secret is an error naming the object and the store's words;
- without ``--in-place``, MODEL_OUT may not be MODEL_IN (test_optimize.py's bad-input cases);
- the termination message (``--termination-log``): JSON under Kubernetes' 4096 bytes holding the
  decision, its reason, both sides' metric, p50Ms, throughput and bytes, the served sha256 and method,
  for one method and for auto's (whose whole report is over the limit), a reason of any length
  clipped to fit; a usage error (exit 2) and a failure (exit 1) leave ``{"error": ...}``; no file,
  no message.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import urllib.request
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as tc

from devkit.classifier import Classifier, make_classifier
from kubeinfer_server import protocol
from kubeinfer_server.optimize_report import TERMINATION_MESSAGE_BYTES, error_message, termination_message
from support.serverproc import ServerProcess, run_cli

MEASURE_SECONDS = "1.5"
SIDE = {"metric", "p50Ms", "throughput", "bytes"}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Classifier:
    return make_classifier(tmp_path_factory.mktemp("classifier"))


@pytest.fixture
def model(classifier, tmp_path) -> Path:
    """A copy of the classifier where a pod's fetch would have put it."""
    path = tmp_path / "models" / "fraud" / "model.onnx"
    path.parent.mkdir(parents=True)
    shutil.copyfile(classifier.model, path)
    return path


def in_place(model: Path, *args: str, log: Path | None = None, env: dict[str, str] | None = None):
    """``optimize`` as the pod's init step runs it (the operator's builder gives these flags)."""
    termination = ["--termination-log", str(log)] if log else []
    return run_cli("optimize", str(model), str(model), "--in-place", "--log-level", "warning",
                   "--measure-seconds", MEASURE_SECONDS, *termination, *args, timeout=120, env=env)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def served_parameters(server: ServerProcess, name: str) -> dict[str, dict[str, str]]:
    """What each surface says of the served file: ModelMetadata over gRPC (the server's own message
    classes: tritonclient's copy drops the parameters) and REST, ModelConfig, kubeinfer_model_info."""
    with grpc.insecure_channel(server.url) as channel:
        call = channel.unary_unary(f"/{protocol.SERVICE_NAME}/ModelMetadata",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=protocol.message("ModelMetadataResponse").FromString)
        response = call(protocol.message("ModelMetadataRequest")(name=name), timeout=10)
    rest = json.load(urllib.request.urlopen(f"http://{server.http_url}/v2/models/{name}", timeout=10))
    with tc.InferenceServerClient(server.url) as client:
        config = client.get_model_config(name, as_json=True)["config"]["parameters"]
    text = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10).read().decode()
    info = re.search(rf'^kubeinfer_model_info{{([^}}]*model="{name}"[^}}]*)}} 1\.0$', text, re.M)
    assert info, text
    keys = ("sha256", "optimization_method")
    return {
        "grpc": {k: response.parameters[k].string_param for k in keys},
        "rest": {k: rest["parameters"][k] for k in keys},
        "config": {k: config[k]["string_value"] for k in keys},
        "metrics": {k: v for k, v in re.findall(r'(\w+)="([^"]*)"', info[1]) if k in keys},
    }


def serve(path: Path) -> ServerProcess:
    return ServerProcess(f"--model=fraud={path}")


def test_an_optimized_model_says_so_wherever_a_client_looks(model):
    done = in_place(model, "--method", "dynamic", "--accept-unvalidated")
    assert done.returncode == 0, done.stderr
    record = json.loads(Path(f"{model}.optimization.json").read_text())
    assert record["method"] == "dynamic" and record["sha256"] == sha256(model) != record["source_sha256"]
    with serve(model) as server:
        reported = served_parameters(server, "fraud")
    expected = {"sha256": sha256(model), "optimization_method": "dynamic"}
    assert reported == {"grpc": expected, "rest": expected, "config": expected, "metrics": expected}


def test_a_rejected_candidate_leaves_the_original_served_as_none(model):
    original = sha256(model)
    done = in_place(model, "--method", "dynamic", "--accept-unvalidated", "--min-speedup", "100",
                    "--exit-zero-on-reject")
    assert done.returncode == 0, done.stderr
    assert "rejected" in done.stdout and "under --min-speedup 100" in done.stdout
    assert sha256(model) == original and not Path(f"{model}.optimization.json").exists()
    with serve(model) as server:
        reported = served_parameters(server, "fraud")
    expected = {"sha256": original, "optimization_method": "none"}
    assert reported == {"grpc": expected, "rest": expected, "config": expected, "metrics": expected}


def test_without_exit_zero_on_reject_a_rejection_exits_3(model):
    original = sha256(model)
    done = in_place(model, "--method", "dynamic", "--accept-unvalidated", "--min-speedup", "100")
    assert done.returncode == 3, done.stderr
    assert sha256(model) == original


def test_a_record_beside_a_replaced_file_says_nothing(model, classifier):
    assert in_place(model, "--method", "dynamic", "--accept-unvalidated").returncode == 0
    shutil.copyfile(classifier.model, model)  # a fresh fetch over the optimized file; its record stays
    with serve(model) as server:
        assert served_parameters(server, "fraud")["grpc"] == {"sha256": sha256(classifier.model),
                                                             "optimization_method": "none"}
        assert "Ignored the optimization record" in server.log() and "it describes another file" in server.log()


@pytest.mark.parametrize("method", ["dynamic", "auto"])
def test_the_termination_message_fits_and_holds_what_the_status_needs(model, classifier, tmp_path, method):
    log = tmp_path / "termination-log"
    log.touch()  # the kubelet makes it; optimize writes only where it exists
    report = tmp_path / "report.json"
    done = in_place(model, "--method", method, "--validation", str(classifier.validation), "--label-column", "label",
                    "--calibration", str(classifier.calibration), "--report", str(report), log=log)
    assert done.returncode == 0, done.stderr
    raw = log.read_bytes()
    assert len(raw) < TERMINATION_MESSAGE_BYTES, raw
    if method == "auto":  # every candidate's figures: more than the kubelet keeps
        assert len(report.read_bytes()) > TERMINATION_MESSAGE_BYTES
    message, full = json.loads(raw), json.loads(report.read_text())
    assert set(message) == {"decision", "reason", "method", "baseline", "candidate", "servedSha256"}
    assert set(message["baseline"]) == SIDE and set(message["candidate"]) == SIDE | {"method"}
    assert (message["decision"], message["reason"], message["method"]) == ("accepted", full["reason"], full["method"])
    assert message["servedSha256"] == sha256(model) == full["sha256_out"]
    assert message["baseline"] == {"metric": full["baseline"]["metric"], "p50Ms": full["baseline"]["p50_ms"],
                                   "throughput": full["baseline"]["throughput"], "bytes": full["baseline"]["bytes"]}
    assert message["candidate"]["bytes"] == model.stat().st_size


def test_a_long_reason_is_clipped_to_fit():
    side = {"metric": 0.98, "p50_ms": 0.04, "throughput": 143002.0, "bytes": 1335863}
    report = {"decision": "rejected", "reason": "no method passed: " + "x" * 20_000, "method": "static",
              "written": False, "baseline": side, "candidate": {"method": "static", **side},
              "sha256_in": "a" * 64, "sha256_out": None}
    raw = json.dumps(termination_message(report)).encode()
    assert len(raw) < TERMINATION_MESSAGE_BYTES and json.loads(raw)["reason"].endswith("...")
    assert len(json.dumps(error_message("y" * 20_000))) < TERMINATION_MESSAGE_BYTES


def test_a_rejection_names_the_original_as_served(model, tmp_path):
    log = tmp_path / "termination-log"
    log.touch()
    original = sha256(model)
    done = in_place(model, "--method", "dynamic", "--accept-unvalidated", "--min-speedup", "100",
                    "--exit-zero-on-reject", log=log)
    assert done.returncode == 0, done.stderr
    message = json.loads(log.read_text())
    assert (message["decision"], message["method"], message["servedSha256"]) == ("rejected", "none", original)
    assert message["candidate"]["method"] == "dynamic" and "under --min-speedup 100" in message["reason"]


def test_errors_leave_an_error_message(model, tmp_path):
    log = tmp_path / "termination-log"
    log.touch()
    usage = in_place(model, "--method", "static", log=log)
    assert usage.returncode == 2
    assert json.loads(log.read_text()) == {"error": "usage: --method static needs --calibration rows "
                                                    "(its activation ranges come from them)"}
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    failed = in_place(broken, "--method", "dynamic", log=log)
    assert failed.returncode == 1
    error = json.loads(log.read_text())["error"]
    assert error.startswith("MODEL_IN: ") and "is not a loadable ONNX model" in error


def test_no_termination_log_no_message(model, tmp_path):
    absent = tmp_path / "no-such-dir" / "termination-log"
    assert in_place(model, "--method", "dynamic", "--accept-unvalidated", log=absent).returncode == 0
    assert not absent.exists() and not absent.parent.exists()


def test_the_validation_rows_come_from_the_object_store(s3_server, model, classifier, tmp_path):
    """As in a pod: the rows in a private bucket, read with the keys the fetch step gets (envFrom)."""
    bucket = s3_server.create_bucket("optimize-data")
    uri = s3_server.put(bucket, "valid/rows.parquet", classifier.validation.read_bytes())
    log = tmp_path / "termination-log"
    log.touch()
    args = ["--method", "dynamic", "--validation", uri, "--label-column", "label", "--exit-zero-on-reject"]
    done = in_place(model, *args, log=log, env=s3_server.env())
    assert done.returncode == 0, done.stderr
    message = json.loads(log.read_text())
    assert abs(message["baseline"]["metric"] - classifier.accuracy) <= 0.001
    wrong = in_place(model, *args, log=log, env={**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert wrong.returncode == 2, wrong.stderr
    error = json.loads(log.read_text())["error"]
    assert uri.removeprefix("s3://") in error and "signature" in error, error
