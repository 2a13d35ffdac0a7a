"""``kubeinfer-server batch`` with its model, its input and its output in a real object store
(SeaweedFS's S3 gateway, ``s3_server``): the parts, ``_errors/`` and ``_SUCCESS`` land as
objects, the scores equal in-process ONNX Runtime, a second run resumes (every part skipped),
and a wrong secret is a clear failure (exit 1) with the store's own error."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

from devkit.models import linear
from support.serverproc import run_cli


def test_batch_reads_and_writes_the_object_store(s3_server, tmp_path):
    bucket = s3_server.create_bucket("batch-data")
    model = Path(linear(tmp_path / "linear.onnx"))
    s3_server.put(bucket, "models/linear.onnx", model.read_bytes())
    x = np.random.default_rng(5).standard_normal((600, 4)).astype(np.float32)
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": np.arange(600), "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 4)}),
                   buffer, row_group_size=200)
    s3_server.put(bucket, "input/2026-12-01/a.parquet", buffer.getvalue())
    args = ["batch", "--model", f"s3://{bucket}/models/linear.onnx", "--input", f"s3://{bucket}/input/2026-12-01/",
            "--output", f"s3://{bucket}/scores/2026-12-01/", "--id-column", "id", "--log-level", "warning"]
    done = run_cli(*args, env=s3_server.env(), timeout=180)
    assert done.returncode == 0, done.stderr
    client = s3_server.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="scores/")["Contents"])
    assert [k for k in keys if "/part-" in k] == [f"scores/2026-12-01/part-00000{i}.parquet" for i in range(3)]
    assert "scores/2026-12-01/_SUCCESS" in keys and not any("/.tmp-" in k for k in keys)
    tables = [pq.read_table(io.BytesIO(client.get_object(Bucket=bucket, Key=k)["Body"].read()))
              for k in keys if "/part-" in k]
    scored = pa.concat_tables(tables).sort_by("id")
    logits = ort.InferenceSession(str(model)).run(["logits"], {"x": x})[0]
    np.testing.assert_array_equal(np.stack(scored.column("logits").to_numpy(zero_copy_only=False)), logits)
    success = json.loads(client.get_object(Bucket=bucket, Key="scores/2026-12-01/_SUCCESS")["Body"].read())
    assert success["rows"] == 600
    again = run_cli(*args, env=s3_server.env(), timeout=180)
    assert again.returncode == 0 and json.loads(again.stderr.strip().splitlines()[-1])["units_skipped"] == 3
    wrong = run_cli(*args, "--overwrite", env={**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "wrong"}, timeout=180)
    assert wrong.returncode == 1, wrong.stderr
    assert "SignatureDoesNotMatch" in wrong.stderr or "Forbidden" in wrong.stderr or "AccessDenied" in wrong.stderr, \
        wrong.stderr[-2000:]
