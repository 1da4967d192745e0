{{- define "coral.name" -}}coral-node-agent{{- end -}}
{{- define "coral.labels" -}}
app.kubernetes.io/name: {{ include "coral.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
