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

{{/*
A name for a second object of the release (the metrics Service, the apps Secret): the full name
shortened so that name, dash and suffix stay within the 63 characters Kubernetes allows.
Call with (dict "root" $ "suffix" "metrics").
*/}}
{{- define "resound.componentName" -}}
{{- $room := sub 62 (len .suffix) | int }}
{{- printf "%s-%s" (include "resound.fullname" .root | trunc $room | trimSuffix "-") .suffix }}
{{- end }}

{{/* "true" or "false": cluster mode, on by default whenever more than one pod can run. */}}
{{- define "resound.scalingEnabled" -}}
{{- $v := toString .Values.scaling.enabled }}
{{- if eq $v "auto" }}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}true{{ else }}false{{ end }}
{{- else if eq $v "true" }}true
{{- else if eq $v "false" }}false
{{- else }}
{{- fail (printf "scaling.enabled must be auto, true or false, not %q" $v) }}
{{- end }}
{{- end }}

{{/* The Secret holding [[apps]] tables, if any. */}}
{{- define "resound.appsSecretName" -}}
{{- if .Values.apps.existingSecret }}
{{- .Values.apps.existingSecret }}
{{- else if .Values.apps.toml }}
{{- include "resound.componentName" (dict "root" . "suffix" "apps") }}
{{- end }}
{{- end }}

{{- define "resound.appsSecretKey" -}}
{{- if .Values.apps.existingSecret }}
{{- .Values.apps.existingSecretKey | default "apps.toml" }}
{{- else }}apps.toml
{{- end }}
{{- end }}
