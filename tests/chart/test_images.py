"""The Dockerfiles under images/ and the local image build (hack/build-images.sh).

Covers, for server-cpu, server-gpu and operator:
- every FROM names a pinned tag (a version, never ``latest`` or none);
- the final stage runs as a numeric, non-root USER;
- ENTRYPOINT is the right console script of pyproject.toml's [project.scripts];
- the image installs the project from the repository source with the right
  extra (cpu / gpu / operator) under images/constraints.txt;
- the GPU image is CUDA 12 + cuDNN 9, and the pinned onnxruntime-gpu is a build
  for CUDA 12 (1.26 was the last); onnxruntime and onnxruntime-gpu never meet
  in one image;
- every path the Dockerfile copies exists, and its .dockerignore lets it through;
- hack/build-images.sh (make images): the image names are the chart's, the pause
  image's name is pinned in one place, its C source blocks until SIGTERM/SIGINT
  and exits 0, the pip-freeze pin check names what constraints.txt misses, and
  (marker ``images``, after make images) the archives match current.json.

No linter run: hadolint is not installable on these machines (not on PyPI, not in
Debian bookworm), so these checks stand in for it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

from chart.chartkit import REPO
from support.required import missing

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


# --- hack/build-images.sh: the images built locally with buildah (make images) ----------

BUILD_IMAGES = REPO / "hack" / "build-images.sh"
PAUSE_SOURCE = IMAGES / "pause" / "pause.c"


def build_images(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(BUILD_IMAGES), *args], capture_output=True, text=True, timeout=60)


def constraint_pins(path: Path = IMAGES / "constraints.txt") -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_constraints_pin_every_requirement_the_images_install():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = project["dependencies"] + extras["cpu"] + extras["gpu"] + extras["s3"] + extras["operator"]
    names = {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", r).group()).lower() for r in requirements}
    pins = constraint_pins()
    assert "uvloop" in pins
    assert names - set(pins) == set(), "direct requirements of the images that images/constraints.txt does not pin"


def test_build_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(BUILD_IMAGES)], check=True)
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", str(BUILD_IMAGES)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_image_names_are_what_the_chart_deploys():
    values = yaml.safe_load((REPO / "charts" / "kubeinfer" / "values.yaml").read_text())
    proc = build_images("names")
    assert proc.returncode == 0, proc.stderr
    operator, server, pause = proc.stdout.split()
    assert operator == f"docker.io/{values['image']['repository']}:{values['image']['tag']}"
    assert server == f"docker.io/{values['server']['image']['repository']}:{values['server']['image']['tag']}"
    assert pause == build_images("pause-image").stdout.strip()


def test_pause_image_name_is_pinned_in_one_place():
    name = build_images("pause-image").stdout.strip()
    assert re.fullmatch(r"localhost/kubeinfer/pause:\d+\.\d+(\.\d+)?", name), name
    lines = [line for line in BUILD_IMAGES.read_text().splitlines() if "localhost/kubeinfer/pause:" in line]
    assert lines == [f'PAUSE_IMAGE="{name}"'], lines


def test_pause_source_waits_for_sigterm_and_reaps_children():
    source = PAUSE_SOURCE.read_text()
    for needle in ("SIGTERM", "SIGINT", "SIGCHLD", "waitpid", "WNOHANG", "sigsuspend"):
        assert needle in source, needle


@pytest.mark.skipif(not shutil.which("gcc"), reason="no gcc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_pause_binary_blocks_until_signalled_and_exits_zero(tmp_path, sig):
    binary = tmp_path / "pause"
    # The build's flags (static where the static libc is installed, as on Debian with libc6-dev).
    subprocess.run(["gcc", "-static", "-Os", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(PAUSE_SOURCE)],
                   check=True, capture_output=True, text=True)
    proc = subprocess.Popen([str(binary)])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.3)
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()


def test_freeze_check_names_every_unpinned_distribution(tmp_path):
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("kubeinfer @ file:///src\ngrpcio==1.85.3\nuvloop==0.23.0\nnot-a-pin==1.0\ngrpcio-tools==1.0\n")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# pins\ngrpcio==1.85.3\nuvloop==0.22.0\ngrpcio_tools==1.0\n")
    proc = build_images("check-freeze", str(freeze), str(constraints))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "not pinned in images/constraints.txt: uvloop==0.23.0 (pinned 0.22.0), not-a-pin==1.0"]
    freeze.write_text("kubeinfer==0.1.0\ngrpcio==1.85.3\nGRPCIO.tools==1.0\n")
    assert build_images("check-freeze", str(freeze), str(constraints)).returncode == 0


def archive_file(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        member = tar.extractfile(name)
        assert member is not None, f"{archive}: no {name}"
        return member.read()


@pytest.mark.images
def test_built_images_match_the_manifest():
    """After `make images`: the archives the local cluster imports are what the manifest says."""
    cache = Path(os.environ.get("KUBEINFER_CACHE", Path.home() / ".cache" / "kubeinfer"))
    manifest_path = cache / "images" / "current.json"
    if not manifest_path.exists():
        missing(f"no {manifest_path}: run make images")
    images = json.loads(manifest_path.read_text())["images"]
    operator, server, pause = build_images("names").stdout.split()
    assert [i["name"] for i in images] == [server, operator, pause]
    users = {server: "65532:65532", operator: "65532:65532", pause: "65535:65535"}
    for image in images:
        archive = Path(image["archive"])
        assert archive.is_absolute() and archive.exists(), archive
        [entry] = json.loads(archive_file(archive, "manifest.json"))
        assert entry["RepoTags"] == [image["name"]]
        assert "sha256:" + entry["Config"].removesuffix(".json") == image["id"]
        config = json.loads(archive_file(archive, entry["Config"]))["config"]
        assert config["User"] == users[image["name"]]
        if image["name"] == pause:
            assert config["Entrypoint"] == ["/pause"]
            continue
        freeze = archive.with_name(archive.name.removesuffix(".tar") + ".freeze.txt")
        proc = build_images("check-freeze", str(freeze))
        assert proc.returncode == 0, proc.stderr
