"""The kinds of object the operator reads and writes: the one table of them (pure).

The kube client finds its paths here, the reconciler the kinds it observes and
prunes (children, in apply order), the kopf handlers the kinds they watch.
"""

from __future__ import annotations

import dataclasses

from kubeinfer_operator import naming


@dataclasses.dataclass(frozen=True)
class Kind:
    """One API kind: ``apiVersion``, ``kind`` and the plural of its REST path."""

    api_version: str
    kind: str
    plural: str

    @property
    def group(self) -> str:
        """The API group; "" for the core group."""
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def path_prefix(self) -> str:
        """The REST path the kind's resources live under: /api/v1 for the core group, else /apis/GROUP/VERSION."""
        return f"/apis/{self.api_version}" if self.group else f"/api/{self.version}"


INFERENCE_DEPLOYMENT = Kind(naming.API_VERSION, naming.KIND, naming.PLURAL)
POD = Kind("v1", "Pod", "pods")
SECRET = Kind("v1", "Secret", "secrets")
CONFIG_MAP = Kind("v1", "ConfigMap", "configmaps")
SERVICE = Kind("v1", "Service", "services")
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
HPA = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
PDB = Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
INFERENCE_BATCH_JOB = Kind(naming.API_VERSION, naming.BATCH_KIND, naming.BATCH_PLURAL)
JOB = Kind("batch/v1", "Job", "jobs")
CRON_JOB = Kind("batch/v1", "CronJob", "cronjobs")

# What the operator creates, in apply order (Secrets before the pods mount them).
CHILDREN = (SECRET, CONFIG_MAP, SERVICE, DEPLOYMENT, HPA, PDB)
# What the operator creates for an InferenceBatchJob: a Job, or a CronJob that makes them.
BATCH_CHILDREN = (JOB, CRON_JOB)
# Every kind the operator talks to the API about.
ALL = (INFERENCE_DEPLOYMENT, INFERENCE_BATCH_JOB, POD, *CHILDREN, *BATCH_CHILDREN)
