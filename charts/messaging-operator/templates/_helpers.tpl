{{/* The chart name, or nameOverride. */}}
{{- define "messaging-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every resource: fullnameOverride, else the release name alone when it already
contains the chart name, else "<release>-<chart>". Truncated to 63 characters (DNS labels).
*/}}
{{- define "messaging-operator.fullname" -}}
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

{{- define "messaging-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* What the Deployment and the metrics Service select on: never changes after install. */}}
{{- define "messaging-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "messaging-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "messaging-operator.labels" -}}
helm.sh/chart: {{ include "messaging-operator.chart" . }}
{{ include "messaging-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: messaging-platform
{{- end }}

{{- define "messaging-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "messaging-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "messaging-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The watched namespaces when the watch is namespaced, as a list (JSON, for fromJsonArray). */}}
{{- define "messaging-operator.watchedNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- .Values.watch.namespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/*
The operator's least-privilege rules, the same for the Role and the ClusterRole; each one is
explained in deploy/operator/README.md and must stay in step with deploy/operator/*.yaml.
*/}}
{{- define "messaging-operator.rules" -}}
# The MessagingClusters: kopf lists and watches them and patches its finalizer and annotations;
# the operator writes the status subresource.
- apiGroups: [messaging.platform.io]
  resources: [messagingclusters]
  verbs: [get, list, watch, patch]
- apiGroups: [messaging.platform.io]
  resources: [messagingclusters/status]
  verbs: [get, patch]
# Children: created, and patched only when they differ from the spec; watched (label-selected)
# so drift is restored at once; deleted only when the spec drops them (a disabled PDB, the
# managed Redis after a switch to external) and only when the operator created them.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# Migration Jobs are created once per image, never changed, and pruned when finished.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# Secrets: read the referenced ones; create the generated Redis password (never changed).
# No list, no watch, no patch, no delete.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
# Pods: watched (label-selected) for the autoscaler; the least-connected get
# controller.kubernetes.io/pod-deletion-cost before a scale-down.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, patch]
# Events on the MessagingClusters.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* The leader-election Lease: only its own name may be read and renewed. */}}
{{- define "messaging-operator.leaseRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ include "messaging-operator.fullname" . }}]
  verbs: [get, update]
{{- end }}
