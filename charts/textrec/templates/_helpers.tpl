{{/* Chart name, truncated to a DNS label. */}}
{{- define "textrec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects. A release already named after the chart ("textrec") is not
doubled into "textrec-textrec".
*/}}
{{- define "textrec.fullname" -}}
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

{{- define "textrec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "textrec.labels" -}}
helm.sh/chart: {{ include "textrec.chart" . }}
{{ include "textrec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: textrec
{{- end }}

{{/* Labels on objects made for the worker pods (their ServiceAccount). */}}
{{- define "textrec.workerLabels" -}}
helm.sh/chart: {{ include "textrec.chart" . }}
app.kubernetes.io/name: {{ include "textrec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: textrec
{{- end }}

{{/* Labels that select the operator pods; immutable once installed (Deployment selector). */}}
{{- define "textrec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "textrec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "textrec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "textrec.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "textrec.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "textrec.workerImage" -}}
{{- $w := .Values.defaults.workerImage }}
{{- printf "%s:%s" $w.repository (default .Chart.AppVersion $w.tag) }}
{{- end }}

{{- define "textrec.workerGpuImage" -}}
{{- $w := .Values.defaults.workerGpuImage }}
{{- printf "%s:%s" $w.repository (default (printf "%s-cuda" .Chart.AppVersion) $w.tag) }}
{{- end }}

{{/*
Namespaces that get namespaced RBAC and worker ServiceAccounts: the watched ones, or the release
namespace when the operator watches the whole cluster. Emitted as a JSON list for fromJsonArray.
*/}}
{{- define "textrec.targetNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}
