{{/* Names, labels and the few derived settings the templates share. */}}

{{- define "resound.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "resound.fullname" -}}
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

{{- define "resound.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "resound.selectorLabels" -}}
app.kubernetes.io/name: {{ include "resound.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "resound.labels" -}}
helm.sh/chart: {{ include "resound.chart" . }}
{{ include "resound.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "resound.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* "true" or "false": cluster mode, on by default whenever more than one pod can run. */}}
{{- define "resound.scalingEnabled" -}}
{{- if eq (toString .Values.scaling.enabled) "auto" }}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}true{{ else }}false{{ end }}
{{- else if eq (toString .Values.scaling.enabled) "true" }}true
{{- else }}false
{{- end }}
{{- end }}

{{/* The Secret holding [[apps]] tables, if any. */}}
{{- define "resound.appsSecretName" -}}
{{- if .Values.apps.existingSecret }}
{{- .Values.apps.existingSecret }}
{{- else if .Values.apps.toml }}
{{- printf "%s-apps" (include "resound.fullname" .) }}
{{- end }}
{{- end }}

{{- define "resound.appsSecretKey" -}}
{{- if .Values.apps.existingSecret }}
{{- .Values.apps.existingSecretKey | default "apps.toml" }}
{{- else }}apps.toml
{{- end }}
{{- end }}
