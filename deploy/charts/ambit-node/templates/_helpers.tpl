{{/* Labels on every object of this chart. */}}
{{- define "ambit-node.labels" -}}
app: ztunnel
app.kubernetes.io/name: ztunnel
app.kubernetes.io/component: node-proxy
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ambit
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "ambit-node.image" -}}
{{ .Values.global.hub }}/ambit:{{ .Values.global.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The control plane's TLS address (WDS and CA share it), as Istio's ztunnel chart derives it. */}}
{{- define "ambit-node.istiodAddress" -}}
istiod{{ with .Values.revision }}-{{ . }}{{ end }}.{{ .Values.istioNamespace }}.svc:15012
{{- end }}
