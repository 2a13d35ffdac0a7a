"""The chart, rendered without a cluster (needs the project's helm binary).

Covers:
- ``helm lint --strict`` with default and non-default values;
- every rendered object carries the app.kubernetes.io/* labels and helm.sh/chart;
  one resource kind per template file;
- the operator Deployment: one replica, Recreate, pinned image (digest wins),
  the operator's own settings env names (kubeinfer_operator.settings.FLAGS), the
  watched namespaces, the liveness endpoint, non-root security context;
- RBAC: no wildcards anywhere; cluster-wide mode is one ClusterRole; namespaced
  mode grants namespaced verbs only through Roles in the watched namespaces and
  keeps the ClusterRole to list/watch of Namespaces and CRDs; every kind the
  operator applies or watches (each controller's children and watched kinds, handlers.SERVING and BATCH)
  has exactly the verbs its code uses; rbac.create / serviceAccount.create off;
- PodMonitor only when monitoring.coreos.com/v1 is served; the prometheus-adapter
  rule names the metric the HPAs ask for (naming.QUEUE_DEPTH_METRIC);
- values that break the schema are refused (typos, latest tag, bad types);
- the chart's crds/ are byte-identical to the top-level crds/.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from chart.chartkit import CHART, REPO, of_kind, rbac_denials, value_args
from kubeinfer_operator import handlers, naming, settings

LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
          "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "helm.sh/chart")
CHILD_VERBS = {"get", "list", "watch", "create", "patch", "delete"}

NON_DEFAULT = {
    "watchNamespaces": ["team-a", "team-b"],
    "image": {"repository": "registry.example.com/kubeinfer/operator", "tag": "0.1.0",
              "digest": "sha256:" + "a" * 64, "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "operator": {"verbose": True, "clusterDomain": "corp.internal", "certificateDurationSeconds": 86400,
                 "caDurationSeconds": 31536000, "resyncSeconds": 30, "healthPort": 9090, "metricsPort": 0,
                 "prometheusUrl": "http://prometheus.monitoring:9090"},
    "server": {"image": {"repository": "registry.example.com/kubeinfer/server-gpu", "tag": "0.1.0"}},
    "serviceAccount": {"create": True, "name": "infer-operator", "annotations": {"example.com/role": "x"}},
    "rbac": {"create": True, "aggregateToDefaultRoles": False},
    "service": {"enabled": False},
    "podAnnotations": {"example.com/a": "b"},
    "podLabels": {"team": "platform"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
    "priorityClassName": "system-cluster-critical",
    "resources": {"requests": {"cpu": "50m", "memory": "200Mi"}, "limits": {"memory": "400Mi"}},
    "monitoring": {"podMonitor": {"enabled": True, "namespace": "monitoring", "labels": {"release": "kps"},
                                  "interval": "30s"},
                   "prometheusAdapter": {"rulesConfigMap": True, "namespace": "monitoring"}},
}


def deployment(objects):
    (deploy,) = of_kind(objects, "Deployment")
    return deploy


def env_of(deploy) -> dict[str, str]:
    return {e["name"]: e["value"] for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}


def rules_by_resource(rules) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def operator_rules(objects, kind: str, name: str = "kubeinfer") -> list[dict]:
    return [r for o in of_kind(objects, kind) if o["metadata"]["name"] == name for r in o["rules"]]


@pytest.mark.parametrize("values", [None, NON_DEFAULT], ids=["default", "non-default"])
def test_lint_passes_strict(helm, values):
    out = helm("lint", "--strict", str(CHART), *value_args(values)).stdout
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", [None, NON_DEFAULT], ids=["default", "non-default"])
def test_every_object_has_the_standard_labels(render, values):
    objects = render(values, api_versions=("monitoring.coreos.com/v1",))
    assert len(objects) >= 6
    for obj in objects:
        labels = obj["metadata"].get("labels") or {}
        missing = [k for k in LABELS if k not in labels]
        assert not missing, f"{obj['kind']} {obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "kubeinfer-0.1.0"


def test_one_kind_per_template_file_named_by_kind(render):
    objects = render(NON_DEFAULT, api_versions=("monitoring.coreos.com/v1",))
    for path in sorted((CHART / "templates").glob("*.yaml")):
        text = path.read_text()
        found = set(re.findall(r"^kind: (\w+)$", text, re.MULTILINE))
        assert len(found) == 1, f"{path.name} holds {found}"
        assert path.stem.split("-")[0] == found.pop().lower(), path.name
    assert {o["kind"] for o in objects} >= {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                           "Role", "RoleBinding", "PodMonitor", "ConfigMap"}


def test_operator_deployment_defaults(render):
    deploy = deployment(render())
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "kubeinfer/operator:0.1.0"
    assert container["args"] == ["--liveness=http://0.0.0.0:8080/healthz"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert env_of(deploy) == {
        "KUBEINFER_SERVER_IMAGE": "kubeinfer/server:0.1.0",
        "KUBEINFER_CLUSTER_DOMAIN": "cluster.local", "KUBEINFER_CERTIFICATE_DURATION_SECONDS": "7776000",
        "KUBEINFER_CA_DURATION_SECONDS": "315360000", "KUBEINFER_RESYNC_SECONDS": "60",
        "KUBEINFER_METRICS_PORT": "8081",
    }
    assert container["ports"][1] == {"name": "metrics", "containerPort": 8081, "protocol": "TCP"}
    assert spec["template"]["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8081", "prometheus.io/path": "/metrics"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["serviceAccountName"] == "kubeinfer"


def test_env_names_are_the_operators_settings(render):
    """Every env var the chart sets is one the operator reads, and the operator accepts the values."""
    env = env_of(deployment(render(NON_DEFAULT)))
    assert set(env) <= {flag.env for flag in settings.FLAGS}
    loaded = settings.load(env=env)
    assert loaded.namespaces == ("team-a", "team-b")
    assert loaded.server_image == "registry.example.com/kubeinfer/server-gpu:0.1.0"
    assert (loaded.cluster_domain, loaded.certificate_duration_seconds) == ("corp.internal", 86400)
    assert (loaded.ca_duration_seconds, loaded.resync_seconds) == (31536000, 30.0)
    assert loaded.prometheus_url == "http://prometheus.monitoring:9090"
    assert "KUBEINFER_PROMETHEUS_URL" not in env_of(deployment(render()))  # default: no right-sizing data


def test_non_default_values_reach_the_pod(render):
    objects = render(NON_DEFAULT)
    pod = deployment(objects)["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.example.com/kubeinfer/operator@sha256:" + "a" * 64
    assert container["args"] == ["--liveness=http://0.0.0.0:9090/healthz", "--verbose"]
    assert container["ports"] == [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]  # metrics off
    assert pod["metadata"]["annotations"] == {"example.com/a": "b"}
    assert pod["metadata"]["labels"]["team"] == "platform"
    assert pod["spec"]["serviceAccountName"] == "infer-operator"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["spec"]["tolerations"][0]["key"] == "dedicated"
    assert not of_kind(objects, "Service")
    (sa,) = of_kind(objects, "ServiceAccount")
    assert sa["metadata"]["name"] == "infer-operator"
    assert {b["subjects"][0]["name"] for b in of_kind(objects, "RoleBinding")} == {"infer-operator"}


def test_rbac_has_no_wildcards(render):
    for values in (None, NON_DEFAULT):
        for obj in render(values):
            for rule in obj.get("rules") or []:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(field, []), f"{obj['kind']} {obj['metadata']['name']}: {rule}"
                assert "nonResourceURLs" not in rule and "resourceNames" not in rule


def expected_namespaced_grants() -> dict[tuple[str, str], set[str]]:
    """What the operator's code calls, derived from the code's own tables."""
    expected: dict[tuple[str, str], set[str]] = {}
    for controller in (handlers.SERVING, handlers.BATCH):
        for kind in controller.children:  # observe, apply (create), check names, prune
            expected[(kind.group, kind.plural)] = set(CHILD_VERBS)
        for group, _version, plural in controller.watched:  # kopf watches these
            expected.setdefault((group, plural), set()).update({"list", "watch"})
        parent = controller.kind.plural
        expected[(naming.GROUP, parent)] = {"get", "list", "watch", "patch"}
        expected[(naming.GROUP, f"{parent}/status")] = {"patch"}
        expected[(naming.GROUP, f"{parent}/finalizers")] = {"update"}
    expected[("", "events")] = {"create"}
    expected[("", "pods/log")] = {"get"}  # kube.log_tail: fetchprogress
    expected[("", "pods/resize")] = {"patch"}  # kube.resize_pod: rightsizer, spec.rightSizing InPlace
    return expected


def test_cluster_wide_rbac_is_exactly_what_the_operator_uses(render):
    objects = render()
    assert not of_kind(objects, "Role") and not of_kind(objects, "RoleBinding")
    granted = rules_by_resource(operator_rules(objects, "ClusterRole"))
    expected = expected_namespaced_grants()
    expected[("apiextensions.k8s.io", "customresourcedefinitions")] = {"list", "watch"}
    assert granted == expected
    (binding,) = of_kind(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "kubeinfer"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubeinfer", "namespace": "kubeinfer-system"}]


def test_namespaced_rbac_stays_in_the_watched_namespaces(render):
    objects = render({"watchNamespaces": ["team-a", "team-b"]})
    cluster_rules = rules_by_resource(operator_rules(objects, "ClusterRole"))
    assert cluster_rules == {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
                             ("", "namespaces"): {"list", "watch"}}
    roles = of_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rules_by_resource(role["rules"]) == expected_namespaced_grants()
    bindings = of_kind(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kubeinfer"}
               for b in bindings)


def test_aggregated_roles_let_namespace_users_manage_inferencedeployments(render):
    objects = render()
    roles = {o["metadata"]["name"]: o for o in of_kind(objects, "ClusterRole")}
    assert roles["kubeinfer-edit"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert roles["kubeinfer-view"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {"create", "delete"} <= set(roles["kubeinfer-edit"]["rules"][0]["verbs"])
    assert "create" not in roles["kubeinfer-view"]["rules"][0]["verbs"]


def test_rbac_and_service_account_can_be_turned_off(render):
    objects = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "existing"}})
    assert {o["kind"] for o in objects} == {"Deployment", "Service"}
    assert deployment(objects)["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


def test_pod_monitor_only_where_the_prometheus_operator_is(render):
    values = {"monitoring": {"podMonitor": {"enabled": True}}}
    assert not of_kind(render(values), "PodMonitor")
    monitors = {m["metadata"]["name"]: m for m in of_kind(render(values, api_versions=("monitoring.coreos.com/v1",)),
                                                           "PodMonitor")}
    assert set(monitors) == {"kubeinfer-servers", "kubeinfer-operator"}
    operator = monitors["kubeinfer-operator"]["spec"]
    assert operator["podMetricsEndpoints"][0]["port"] == "metrics"
    assert operator["selector"]["matchLabels"] == deployment(render())["spec"]["selector"]["matchLabels"]
    spec = monitors["kubeinfer-servers"]["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"]["matchLabels"] == {"app.kubernetes.io/name": naming.SERVER_APP,
                                               "app.kubernetes.io/managed-by": naming.MANAGED_BY}
    assert spec["podMetricsEndpoints"][0]["port"] == "metrics"
    (scoped,) = of_kind(render({**NON_DEFAULT}, api_versions=("monitoring.coreos.com/v1",)), "PodMonitor")  # no
    # operator PodMonitor there: NON_DEFAULT turns the operator's metrics off
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert scoped["metadata"]["namespace"] == "monitoring" and scoped["metadata"]["labels"]["release"] == "kps"


def test_prometheus_adapter_rule_serves_the_hpa_metric(render):
    assert not of_kind(render(), "ConfigMap")
    (config_map,) = of_kind(render({"monitoring": {"prometheusAdapter": {"rulesConfigMap": True}}}), "ConfigMap")
    (rule,) = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    assert rule["seriesQuery"].startswith(naming.QUEUE_DEPTH_METRIC + "{")
    assert rule["name"]["as"] == naming.QUEUE_DEPTH_METRIC
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "<<.GroupBy>>" in rule["metricsQuery"]


@pytest.mark.parametrize("bad", [
    {"imageTag": 1},                                            # unknown top-level key
    {"image": {"repository": "x", "tag": "0.1.0", "tagg": "y"}},  # typo inside a section
    {"image": {"repository": "x", "tag": "latest"}},            # unpinned
    {"server": {"image": {"repository": "x", "tag": "latest"}}},
    {"watchNamespaces": "team-a"},                              # not a list
    {"watchNamespaces": ["Team_A"]},                            # not a namespace name
    {"operator": {"certificateDurationSeconds": 60}},           # below the operator's minimum
    {"operator": {"resyncSeconds": 0}},
    {"rbac": {"create": "yes"}},
    {"monitoring": {"podMonitor": {"interval": "soon"}}},
    {"resources": {"requests": {"gpu": 1}}},
], ids=lambda v: json.dumps(v)[:60])
def test_schema_refuses_bad_values(helm, bad):
    proc = helm("template", "kubeinfer", str(CHART), *value_args(bad), check=False)
    assert proc.returncode != 0
    assert "schema" in proc.stderr


def test_schema_forbids_unknown_keys_everywhere():
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node, where):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, where
            for key, child in node.items():
                walk(child, f"{where}/{key}")

    walk(schema, "")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values) == set(schema["properties"])


def test_values_are_documented_name_first():
    """Each leaf value in values.yaml has a comment block right above it that starts with its name."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    path: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w-]*):(.*)$", line)
        if not match:
            continue
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).strip()
        path = [(d, k) for d, k in path if d < indent] + [(indent, key)]
        if indent and path[0][1] in ("podSecurityContext", "securityContext", "resources"):
            continue  # Kubernetes objects documented as a whole.
        if not rest:
            continue  # A section; its leaves are documented.
        dotted = ".".join(k for _, k in path)
        j = i
        while j > 0 and lines[j - 1].strip().startswith("#"):
            j -= 1
        comment = lines[j].strip() if j < i else ""
        assert re.match(rf"# ({re.escape(dotted)}|{re.escape(key)})[ ,]", comment), (dotted, comment)


def test_chart_crds_are_identical_to_the_top_level_crds():
    top = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert top and top == chart
    for name in top:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), name


def test_chart_and_app_versions_match_the_project():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)
    assert chart["appVersion"] == version
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["tag"] == version and values["server"]["image"]["tag"] == version
    assert settings.Settings().server_image == f"{values['server']['image']['repository']}:{version}"


def test_notes_tell_what_to_apply_next():
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "kind: InferenceDeployment" in notes and "kubectl apply" in notes
    assert "kubectl apply --server-side -f crds/" in notes


def test_the_rbac_proof_reads_denials_not_timestamps():
    # The RBAC proof fails on any operator log line that reads as a denial; a timestamp whose
    # milliseconds are 403 once made it fail on an ordinary "Created" line.
    log = "\n".join([
        "[2026-11-29 23:33:12,403] kubeinfer_operator.r [INFO    ] Created ConfigMap ns/rbac-ca-bundle",
        "[2026-11-29 23:33:12,404] kopf.objects [ERROR   ] APIForbiddenError: configmaps is forbidden",
        "[2026-11-29 23:33:12,405] kubeinfer_operator.api [WARNING ] PATCH answered 403",
        "[2026-11-29 23:33:12,406] kopf [INFO    ] namespace ns is being terminated (403)",
    ])
    assert [line[26:30] for line in rbac_denials(log)] == ["kopf", "kube"]
