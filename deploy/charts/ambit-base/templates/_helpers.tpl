{{/* Labels on every object of this chart. */}}
{{- define "ambit-base.labels" -}}
app.kubernetes.io/name: ambit-base
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ambit
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A list of strings, the building block of Istio's match fields. */}}
{{- define "ambit-base.strings" -}}
type: array
items:
  type: string
{{- end }}

{{/* A workload selector: labels of the pods a policy applies to. */}}
{{- define "ambit-base.selector" -}}
type: object
properties:
  matchLabels:
    type: object
    additionalProperties:
      type: string
{{- end }}

{{/* A reference to a Gateway API object (targetRef), accepted and ignored at L4. */}}
{{- define "ambit-base.targetRef" -}}
type: object
required: [kind, name]
properties:
  group: {type: string}
  kind: {type: string}
  name: {type: string}
  namespace: {type: string}
{{- end }}

{{- define "ambit-base.authorizationPolicySpec" -}}
description: AuthorizationPolicy enables access control on workloads.
type: object
x-kubernetes-preserve-unknown-fields: true
properties:
  action:
    type: string
    enum: [ALLOW, DENY, AUDIT, CUSTOM]
  provider:
    type: object
    properties:
      name: {type: string}
  selector:
    {{- include "ambit-base.selector" . | nindent 4 }}
  targetRef:
    {{- include "ambit-base.targetRef" . | nindent 4 }}
  targetRefs:
    type: array
    items:
      {{- include "ambit-base.targetRef" . | nindent 6 }}
  rules:
    type: array
    items:
      type: object
      properties:
        from:
          type: array
          items:
            type: object
            properties:
              source:
                type: object
                properties:
                  {{- range list "principals" "notPrincipals" "requestPrincipals" "notRequestPrincipals" "namespaces" "notNamespaces" "serviceAccounts" "notServiceAccounts" "ipBlocks" "notIpBlocks" "remoteIpBlocks" "notRemoteIpBlocks" }}
                  {{ . }}:
                    {{- include "ambit-base.strings" $ | nindent 20 }}
                  {{- end }}
        to:
          type: array
          items:
            type: object
            properties:
              operation:
                type: object
                properties:
                  {{- range list "hosts" "notHosts" "ports" "notPorts" "methods" "notMethods" "paths" "notPaths" }}
                  {{ . }}:
                    {{- include "ambit-base.strings" $ | nindent 20 }}
                  {{- end }}
        when:
          type: array
          items:
            type: object
            required: [key]
            properties:
              key: {type: string}
              values:
                {{- include "ambit-base.strings" . | nindent 16 }}
              notValues:
                {{- include "ambit-base.strings" . | nindent 16 }}
{{- end }}

{{- define "ambit-base.mtls" -}}
type: object
properties:
  mode:
    type: string
    enum: [UNSET, DISABLE, PERMISSIVE, STRICT]
{{- end }}

{{- define "ambit-base.peerAuthenticationSpec" -}}
description: PeerAuthentication defines how traffic will be tunneled (or not) to the sidecar.
type: object
x-kubernetes-preserve-unknown-fields: true
properties:
  selector:
    {{- include "ambit-base.selector" . | nindent 4 }}
  mtls:
    {{- include "ambit-base.mtls" . | nindent 4 }}
  portLevelMtls:
    type: object
    additionalProperties:
      {{- include "ambit-base.mtls" . | nindent 6 }}
{{- end }}
