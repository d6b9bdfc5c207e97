{{- define "conductor.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "conductor.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "conductor.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "conductor.natsUrl" -}}
{{- if .Values.natsUrl -}}{{ .Values.natsUrl }}{{- else -}}nats://{{ .Release.Name }}-nats:4222{{- end -}}
{{- end -}}

{{/* Environment shared by every service. */}}
{{- define "conductor.env" -}}
- name: NATS_URL
  value: {{ include "conductor.natsUrl" . | quote }}
- name: DATABASE_URL
{{- if .Values.databaseUrlSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.databaseUrlSecret }}
      key: DATABASE_URL
{{- else if .Values.databaseUrl }}
  value: {{ .Values.databaseUrl | quote }}
{{- else }}
  valueFrom:
    secretKeyRef:
      name: {{ include "conductor.fullname" . }}-db
      key: DATABASE_URL
{{- end }}
- name: CONDUCTOR_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: CONDUCTOR_STREAM_REPLICAS
  value: {{ .Values.streamReplicas | quote }}
{{- /* The gateway's HTTP port and every metrics port listen on the pod's addresses. */}}
- name: CONDUCTOR_HOST
  value: "0.0.0.0"
{{- with .Values.metrics.port }}
- name: CONDUCTOR_METRICS_PORT
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* A pod's scrape annotations, under its template's metadata; nothing when metrics are off. */}}
{{- define "conductor.metricsAnnotations" -}}
{{- with .Values.metrics.port -}}
annotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ . | quote }}
  prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* The metrics entry of a container's ports; nothing when metrics are off. */}}
{{- define "conductor.metricsPort" -}}
{{- with .Values.metrics.port -}}
- name: metrics
  containerPort: {{ . }}
{{- end }}
{{- end -}}

{{- define "conductor.image" -}}
image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- end -}}
