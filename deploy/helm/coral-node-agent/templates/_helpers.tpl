{{/* The chart's name, or nameOverride. */}}
{{- define "coral.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release-scoped name of the agent's resources: fullnameOverride, else the
release name when it already holds the chart name, else <release>-<name>.
*/}}
{{- define "coral.fullname" -}}
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

{{/* The colony's resources: <fullname>-colony. */}}
{{- define "coral.colony.fullname" -}}
{{- printf "%s-colony" (include "coral.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "coral.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every resource carries. */}}
{{- define "coral.commonLabels" -}}
helm.sh/chart: {{ include "coral.chart" . | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/part-of: "coral"
{{- end }}

{{/* The agent's selector labels (immutable once installed). */}}
{{- define "coral.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coral.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: "node-agent"
{{- end }}

{{- define "coral.labels" -}}
{{ include "coral.selectorLabels" . }}
{{ include "coral.commonLabels" . }}
{{- end }}

{{/* The colony's selector labels. */}}
{{- define "coral.colony.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coral.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: "colony"
{{- end }}

{{- define "coral.colony.labels" -}}
{{ include "coral.colony.selectorLabels" . }}
{{ include "coral.commonLabels" . }}
{{- end }}

{{- define "coral.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "coral.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag (tag default: appVersion) or repository@digest. */}}
{{- define "coral.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Where the agents dial: colony.address when it is a string ("" = cache-only),
else the chart's colony Service when colony.enabled, else the plain-manifest
colony (deploy/colony.yaml).
*/}}
{{- define "coral.colonyAddress" -}}
{{- if kindIs "string" .Values.colony.address }}
{{- .Values.colony.address }}
{{- else if .Values.colony.enabled }}
{{- printf "%s.%s.svc:%v" (include "coral.colony.fullname" .) .Release.Namespace .Values.colony.service.port }}
{{- else }}
{{- "coral-colony.coral-system.svc:9000" }}
{{- end }}
{{- end }}

{{/* The agent's container paths. */}}
{{- define "coral.colonyDir" -}}/etc/coral/colony{{- end }}
{{- define "coral.colonyTokenDir" -}}/var/run/secrets/coral/colony-token{{- end }}
{{- define "coral.cacheFile" -}}/var/lib/coral/agent.db{{- end }}

{{/*
A kubelet probe: (dict "name" "livenessProbe" "probe" <values: enabled + timing> "action" <exec or httpGet>
"indent" <the container's keys' column>), rendered on a new line when enabled, nothing when not.
*/}}
{{- define "coral.probe" -}}
{{- if .probe.enabled }}
{{ dict .name (merge (omit .probe "enabled") .action) | toYaml | trimSuffix "\n" | indent .indent }}
{{- end }}
{{- end }}

{{/*
agent.yaml: .Values.config with the keys tied to the pod set by the chart.
*/}}
{{- define "coral.agentConfig" -}}
{{- $owned := dict
  "discovery" (dict
    "cri" (dict "socket" .Values.criSocket)
    "kubernetes" (dict "api" (ternary "on" "off" .Values.kubernetesApi.enabled))
    "procRoot" "/host/proc")
  "cache" (dict "path" (include "coral.cacheFile" .))
  "ops" (dict "observeOnly" (eq .Values.mode "observe-only"))
}}
{{- if .Values.metrics.enabled }}
{{- $_ := set $owned "metrics" (dict "listen" (printf "0.0.0.0:%d" (int .Values.metrics.port))) }}
{{- end }}
{{- $address := include "coral.colonyAddress" . }}
{{- if $address }}
{{- $colony := dict
  "address" $address
  "colonyId" .Values.colony.colonyId
  "caFile" (printf "%s/ca.crt" (include "coral.colonyDir" .)) }}
{{- $method := .Values.colony.enrollment.method }}
{{- if eq $method "serviceAccount" }}
{{- $_ := set $colony "serviceAccountTokenFile" (printf "%s/token" (include "coral.colonyTokenDir" .)) }}
{{- else if eq $method "bootstrapToken" }}
{{- $_ := set $colony "bootstrapTokenFile" (printf "%s/bootstrap-token" (include "coral.colonyDir" .)) }}
{{- else }}
{{- $_ := set $colony "secretFile" (printf "%s/colony-secret" (include "coral.colonyDir" .)) }}
{{- end }}
{{- $_ := set $owned "colony" $colony }}
{{- end }}
{{- $config := mustMergeOverwrite (deepCopy .Values.config) $owned }}
{{- if not $address }}
{{- $_ := unset $config "colony" }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/* ServiceAccount enrollment: the agents project a token for the colony, which checks it with TokenReview. */}}
{{- define "coral.serviceAccountEnrollment" -}}
{{- if eq .Values.colony.enrollment.method "serviceAccount" }}true{{ end }}
{{- end }}
