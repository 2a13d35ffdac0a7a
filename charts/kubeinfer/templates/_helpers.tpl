{{/* The chart name, or nameOverride. */}}
{{- define "kubeinfer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the objects: release-chart, or the release name when it already holds the chart name. */}}
{{- define "kubeinfer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "kubeinfer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels that select the operator pod (immutable once installed). */}}
{{- define "kubeinfer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeinfer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The labels every object of the chart carries (add app.kubernetes.io/component). */}}
{{- define "kubeinfer.commonLabels" -}}
helm.sh/chart: {{ include "kubeinfer.chart" . }}
app.kubernetes.io/name: {{ include "kubeinfer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeinfer
{{- end }}

{{/* The labels of the operator's own objects. */}}
{{- define "kubeinfer.labels" -}}
{{ include "kubeinfer.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "kubeinfer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubeinfer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: by digest when one is given, else by the pinned tag. */}}
{{- define "kubeinfer.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}
{{- end }}

{{/* The default server image handed to the operator. */}}
{{- define "kubeinfer.serverImage" -}}
{{- printf "%s:%s" .Values.server.image.repository .Values.server.image.tag }}
{{- end }}

{{/*
The rules the operator needs wherever it reconciles: a ClusterRole's in
cluster-wide mode, each watched namespace's Role otherwise. Every verb here is
one the operator's code calls; tests/chart/test_rbac.py runs the real operator
under exactly these rules.
*/}}
{{- define "kubeinfer.namespacedRules" -}}
# The custom resources: kopf lists and watches them, the reconcilers read the
# current version, kopf patches its progress annotations and finalizer.
- apiGroups: [kubeinfer.io]
  resources: [inferencedeployments, inferencebatchjobs]
  verbs: [get, list, watch, patch]
# Status is written by server-side apply (PATCH) to the status subresource.
- apiGroups: [kubeinfer.io]
  resources: [inferencedeployments/status, inferencebatchjobs/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion: true; where the
# OwnerReferencesPermissionEnforcement admission plugin is on, that needs update
# on the owner's finalizers subresource.
- apiGroups: [kubeinfer.io]
  resources: [inferencedeployments/finalizers, inferencebatchjobs/finalizers]
  verbs: [update]
# Children: server-side apply (patch; create when the object is new), get to
# check a name is not another controller's, list and watch to observe them,
# delete to prune children no longer wanted.
- apiGroups: [""]
  resources: [secrets, configmaps, services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# An InferenceBatchJob's Job or CronJob; the Jobs a CronJob makes are only read.
- apiGroups: [batch]
  resources: [jobs, cronjobs]
  verbs: [get, list, watch, create, patch, delete]
# Server and batch pods are only read, for readiness and counts in the status.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# While a pod fetches its model, the last line of its fetch step's log says how
# far it has come (the LoadingModel message).
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# spec.rightSizing mode InPlace: the running server pods are resized through
# their resize subresource (a patch of the server container's resources).
- apiGroups: [""]
  resources: [pods/resize]
  verbs: [patch]
# Events about InferenceDeployments and InferenceBatchJobs (the reconcilers' and kopf's own).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* Cluster-scoped reads kopf makes in every mode: it watches CRDs to notice new resource versions. */}}
{{- define "kubeinfer.clusterScopedRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
# Watching named namespaces, kopf lists and watches Namespaces to follow their
# creation and deletion.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}
