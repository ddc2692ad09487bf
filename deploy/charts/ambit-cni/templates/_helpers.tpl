{{/* Labels on every object of this chart. */}}
{{- define "ambit-cni.labels" -}}
k8s-app: istio-cni-node
app.kubernetes.io/name: istio-cni
app.kubernetes.io/component: capture-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ambit
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "ambit-cni.image" -}}
{{ .Values.global.hub }}/ambit:{{ .Values.global.tag | default .Chart.AppVersion }}
{{- end }}
