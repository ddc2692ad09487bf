{{/* Name of the Deployment, Service and PDB: istiod, or istiod-<revision>, as Istio names them. */}}
{{- define "ambit-control.name" -}}
{{- if .Values.revision }}istiod-{{ .Values.revision }}{{ else }}istiod{{ end }}
{{- end }}

{{- define "ambit-control.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "ambit-control.name" .) }}
{{- end }}

{{/* Labels on every object of this chart. */}}
{{- define "ambit-control.labels" -}}
app: istiod
istio.io/rev: {{ .Values.revision | default "default" | quote }}
app.kubernetes.io/name: istiod
app.kubernetes.io/component: control-plane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ambit
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Pod selector. The default revision keeps Istio's `istio: pilot`, so the Service "istiod" never
selects a canary; a revision selects on istio.io/rev instead.
*/}}
{{- define "ambit-control.selectorLabels" -}}
app: istiod
{{- if .Values.revision }}
istio.io/rev: {{ .Values.revision | quote }}
{{- else }}
istio: pilot
{{- end }}
{{- end }}

{{- define "ambit-control.image" -}}
{{ .Values.global.hub }}/ambit:{{ .Values.global.tag | default .Chart.AppVersion }}
{{- end }}
