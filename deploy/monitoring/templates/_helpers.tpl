{{/* Labels on every object; release: selects this object into kube-prometheus-stack's Prometheus. */}}
{{- define "ambit-monitoring.labels" -}}
app.kubernetes.io/name: ambit-monitoring
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ambit
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
release: {{ .Values.prometheus.release | quote }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}
