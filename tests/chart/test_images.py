"""The Dockerfiles under images/ (not built here: there is no container runtime).

Covers, for server-cpu, server-gpu and operator:
- every FROM names a pinned tag (a version, never ``latest`` or none);
- the final stage runs as a numeric, non-root USER;
- ENTRYPOINT is the right console script of pyproject.toml's [project.scripts];
- the image installs the project from the repository source with the right
  extra (cpu / gpu / operator) under images/constraints.txt;
- the GPU image is CUDA 12 + cuDNN 9, and the pinned onnxruntime-gpu is a build
  for CUDA 12 (1.26 was the last); onnxruntime and onnxruntime-gpu never meet
  in one image;
- every path the Dockerfile copies exists, and its .dockerignore lets it through.

No linter run: hadolint is not installable on these machines (not on PyPI, not in
Debian bookworm), so these checks stand in for it.
"""

from __future__ import annotations

import re
import tomllib

import pytest

from chart.chartkit import REPO

IMAGES = REPO / "images"
EXPECTED = {
    "server-cpu": ("kubeinfer-server", "cpu"),
    "server-gpu": ("kubeinfer-server", "gpu"),
    "operator": ("kubeinfer-operator", "operator"),
}


def instructions(name: str) -> list[tuple[str, str]]:
    text = (IMAGES / f"{name}.Dockerfile").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def final_stage(name: str) -> list[tuple[str, str]]:
    steps = instructions(name)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("name", EXPECTED)
def test_base_images_are_pinned(name):
    stages = [rest.split()[0] for word, rest in instructions(name) if word == "FROM"]
    assert stages
    for image in stages:
        repo, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.match(r"^\d+\.\d+\.\d+", tag), image


@pytest.mark.parametrize("name", EXPECTED)
def test_runs_as_numeric_non_root_user(name):
    users = [rest for word, rest in final_stage(name) if word == "USER"]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)


@pytest.mark.parametrize("name", EXPECTED)
def test_entrypoint_is_the_console_script(name):
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoints = [rest for word, rest in final_stage(name) if word == "ENTRYPOINT"]
    script = EXPECTED[name][0]
    assert entrypoints == [f'["{script}"]']
    assert script in scripts


@pytest.mark.parametrize("name", EXPECTED)
def test_installs_the_repository_source_with_pinned_versions(name):
    extra = EXPECTED[name][1]
    runs = " ".join(rest for word, rest in instructions(name) if word == "RUN")
    assert re.search(rf'pip install --constraint images/constraints\.txt "\.\[{extra}(,[a-z0-9]+)*\]"', runs), runs
    copied = [rest.split()[:-1] for word, rest in instructions(name) if word == "COPY" and "--from" not in rest]
    ignore = (IMAGES / f"{name}.Dockerfile.dockerignore").read_text().splitlines()
    for sources in copied:
        for source in sources:
            assert (REPO / source).exists(), source
            assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is not let through .dockerignore"


def test_constraints_pin_everything_exactly():
    pins = {}
    for line in (IMAGES / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and re.match(r"^\d", version), line
            pins[name.lower().replace("_", "-")] = version
    assert {"onnxruntime", "onnxruntime-gpu", "grpcio", "kopf", "kubernetes", "s3fs"} <= set(pins)
    # 1.27 and later onnxruntime-gpu wheels on PyPI need CUDA 13.
    major, minor = (int(x) for x in pins["onnxruntime-gpu"].split(".")[:2])
    assert (major, minor) <= (1, 26)


def test_gpu_image_is_cuda_12_with_cudnn_9():
    bases = {rest.split()[0] for word, rest in instructions("server-gpu") if word == "FROM"}
    assert all(re.match(r"^nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-", b) for b in bases), bases
    runs = " ".join(rest for word, rest in instructions("server-gpu") if word == "RUN")
    assert "[gpu" in runs and "[cpu" not in runs
    assert "[gpu" not in " ".join(rest for word, rest in instructions("server-cpu") if word == "RUN")
