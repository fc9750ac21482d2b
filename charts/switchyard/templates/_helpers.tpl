{{- define "switchyard.name" -}}switchyard{{- end -}}

{{- define "switchyard.fullname" -}}
{{- if contains "switchyard" .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-switchyard" .Release.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "switchyard.labels" -}}
app.kubernetes.io/name: switchyard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "switchyard.cp.name" -}}{{ include "switchyard.fullname" . }}-control-plane{{- end -}}
{{- define "switchyard.dp.name" -}}{{ include "switchyard.fullname" . }}-data-plane{{- end -}}
{{- define "switchyard.tls.secret" -}}{{ default (printf "%s-grpc-tls" (include "switchyard.fullname" .)) .Values.tls.existingSecret }}{{- end -}}

{{- define "switchyard.cp.selector" -}}
app.kubernetes.io/name: switchyard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "switchyard.dp.selector" -}}
app.kubernetes.io/name: switchyard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: data-plane
{{- end -}}

{{- define "switchyard.image" -}}
{{- $root := index . 0 -}}{{- $name := index . 1 -}}
{{ $root.Values.image.repository }}/{{ $name }}:{{ default $root.Chart.AppVersion $root.Values.image.tag }}
{{- end -}}

{{- define "switchyard.redisUrl" -}}
{{- if .Values.redis.url -}}{{ .Values.redis.url }}{{- else if .Values.redis.bundled.enabled -}}redis://{{ include "switchyard.fullname" . }}-redis:6379{{- end -}}
{{- end -}}

{{/* SWITCHYARD_REDIS_URL for both planes: from a Secret (URLs with passwords), a value, or the bundled Redis. */}}
{{- define "switchyard.redisEnv" -}}
{{- if .Values.redis.urlSecretRef.name }}
- name: SWITCHYARD_REDIS_URL
  valueFrom: {secretKeyRef: {name: {{ .Values.redis.urlSecretRef.name | quote }}, key: {{ .Values.redis.urlSecretRef.key | default "url" | quote }}}}
{{- else }}
{{- with include "switchyard.redisUrl" . }}
- name: SWITCHYARD_REDIS_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- if .Values.redis.cluster }}
- name: SWITCHYARD_REDIS_CLUSTER
  value: "true"
{{- end }}
{{- end -}}

{{/* The audit trail's settings for the data plane. */}}
{{- define "switchyard.auditEnv" -}}
{{- if .Values.audit.enabled }}
{{- if .Values.audit.redisStream }}
{{- if .Values.redis.cluster }}
{{- fail "audit.redisStream does not work with redis.cluster: use audit.files, or a separate Redis" }}
{{- end }}
{{- if .Values.redis.urlSecretRef.name }}
- name: SWITCHYARD_AUDIT_REDIS_URL
  valueFrom: {secretKeyRef: {name: {{ .Values.redis.urlSecretRef.name | quote }}, key: {{ .Values.redis.urlSecretRef.key | default "url" | quote }}}}
{{- else if include "switchyard.redisUrl" . }}
- name: SWITCHYARD_AUDIT_REDIS_URL
  value: {{ include "switchyard.redisUrl" . | quote }}
{{- else }}
{{- fail "audit.redisStream needs redis.url, redis.urlSecretRef or redis.bundled" }}
{{- end }}
- name: SWITCHYARD_AUDIT_STREAM
  value: {{ .Values.audit.stream | quote }}
- name: SWITCHYARD_AUDIT_STREAM_MAXLEN
  value: {{ .Values.audit.streamMaxLen | int64 | quote }}
{{- end }}
{{- if .Values.audit.files.enabled }}
- name: SWITCHYARD_AUDIT_DIR
  value: /var/lib/switchyard/audit
- name: SWITCHYARD_AUDIT_MAX_FILE_BYTES
  value: {{ .Values.audit.files.maxFileBytes | int64 | quote }}
- name: SWITCHYARD_AUDIT_MAX_FILES
  value: {{ .Values.audit.files.maxFiles | int64 | quote }}
{{- end }}
{{- if .Values.audit.keySecretRef.name }}
- name: SWITCHYARD_AUDIT_KEY_FILE
  value: /etc/switchyard/audit-key/key
{{- end }}
- name: SWITCHYARD_AUDIT_BUFFER
  value: {{ .Values.audit.buffer | int64 | quote }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy peers allowed on admin ports: what scrapes metrics (the namespaces and
pods named), nothing else. Probes come from the kubelet, which NetworkPolicies do not filter. */}}
{{- define "switchyard.adminPeers" -}}
{{- with .Values.networkPolicy.adminNamespaces }}
- namespaceSelector:
    matchExpressions:
      - {key: kubernetes.io/metadata.name, operator: In, values: {{ toJson . }}}
{{- end }}
{{- with .Values.networkPolicy.adminFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The Secret holding the admin token: the one named, or the chart's generated one. */}}
{{- define "switchyard.adminToken.secret" -}}{{ default (printf "%s-admin-token" (include "switchyard.fullname" .)) .Values.admin.tokenSecretRef.name }}{{- end -}}

{{/* OTLP export of a plane: endpoint, protocol, sampling and headers from a Secret. */}}
{{- define "switchyard.otelEnv" -}}
{{- if .Values.otel.endpoint }}
- name: SWITCHYARD_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: SWITCHYARD_OTLP_PROTOCOL
  value: {{ .Values.otel.protocol | quote }}
- name: SWITCHYARD_TRACE_SAMPLE_RATIO
  value: {{ .Values.otel.sampleRatio | quote }}
{{- if .Values.otel.headersSecretRef.name }}
- name: SWITCHYARD_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.otel.headersSecretRef.name | quote }}
      key: {{ .Values.otel.headersSecretRef.key | default "headers" | quote }}
{{- end }}
{{- end }}
{{- end }}
