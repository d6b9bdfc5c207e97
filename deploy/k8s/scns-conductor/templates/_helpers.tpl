{{/* The release's base name: helm's convention (the release name alone when it already contains
the chart's name), at most 63 characters. */}}
{{- define "conductor.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's object name. The base is cut to leave room for "-<component>", so the whole
stays within the 63 characters of a DNS label (the suffix used to be added after the cut). */}}
{{- define "conductor.name" -}}
{{- $suffix := printf "-%s" .component -}}
{{- include "conductor.fullname" .root | trunc (int (sub 63 (len $suffix))) | trimSuffix "-" -}}{{ $suffix }}
{{- end -}}

{{/* A subchart's fullname, as the nats and bitnami charts compute it (their services and secrets). */}}
{{- define "conductor.subchartFullname" -}}
{{- $values := index .root.Values .name -}}
{{- if $values.fullnameOverride -}}
{{- $values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .name $values.nameOverride -}}
{{- if contains $name .root.Release.Name -}}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A value as an environment string. `quote` alone prints numbers from a values file (float64s)
with %v, so 1048576 became "1.048576e+06"; JSON writes them as they were written. */}}
{{- define "conductor.str" -}}
{{- if kindIs "string" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "conductor.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The labels of a component's objects: the common ones plus its selector. */}}
{{- define "conductor.componentLabels" -}}
{{ include "conductor.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "conductor.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* NATS: natsUrl, or the bundled cluster's client Service. Neither is a mistake caught here:
the pods would otherwise wait forever for a server that was never deployed. */}}
{{- define "conductor.natsUrl" -}}
{{- if .Values.natsUrl -}}
{{- .Values.natsUrl -}}
{{- else if .Values.nats.enabled -}}
nats://{{ include "conductor.subchartFullname" (dict "root" . "name" "nats") }}.{{ .Release.Namespace }}.svc:4222
{{- else -}}
{{- fail "nats.enabled=false needs natsUrl (the external NATS servers, comma-separated)" -}}
{{- end -}}
{{- end -}}

{{/* DATABASE_URL and, with the bundled PostgreSQL, PGPASSWORD from the Secret the postgresql chart
creates: the password is read when the pod starts (asyncpg reads PGPASSWORD when the URL has
none), never at template time, where `lookup` finds nothing on a first install or a dry run. */}}
{{- define "conductor.databaseEnv" -}}
{{- if .Values.databaseUrlSecret }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.databaseUrlSecret }}
      key: {{ .Values.databaseUrlSecretKey }}
{{- else if .Values.databaseUrl }}
- name: DATABASE_URL
  value: {{ .Values.databaseUrl | quote }}
{{- else if .Values.postgresql.enabled }}
{{- $pg := include "conductor.subchartFullname" (dict "root" . "name" "postgresql") }}
{{- $auth := .Values.postgresql.auth }}
- name: DATABASE_URL
  value: {{ printf "postgresql://%s@%s.%s.svc:5432/%s" $auth.username $pg .Release.Namespace $auth.database | quote }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default $pg $auth.existingSecret }}
      key: {{ $auth.secretKeys.userPasswordKey }}
{{- else }}
{{- fail "postgresql.enabled=false needs databaseUrl or databaseUrlSecret (a Secret with key DATABASE_URL)" }}
{{- end }}
{{- end -}}

{{/* Environment shared by every service. */}}
{{- define "conductor.env" -}}
- name: NATS_URL
  value: {{ include "conductor.natsUrl" . | quote }}
- name: CONDUCTOR_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: CONDUCTOR_STREAM_REPLICAS
  value: {{ include "conductor.str" .Values.streamReplicas | quote }}
{{- /* The gateway's HTTP port and every metrics port listen on the pod's addresses. */}}
- name: CONDUCTOR_HOST
  value: "0.0.0.0"
{{- with .Values.metrics.port }}
- name: CONDUCTOR_METRICS_PORT
  value: {{ include "conductor.str" . | quote }}
{{- end }}
{{- end -}}

{{/* Node liveness, which the scheduler and the executors must agree on. */}}
{{- define "conductor.livenessEnv" -}}
- name: CONDUCTOR_HEARTBEAT_S
  value: {{ include "conductor.str" .Values.nodeLiveness.heartbeatSeconds | quote }}
- name: CONDUCTOR_NODE_LOST_AFTER_S
  value: {{ include "conductor.str" .Values.nodeLiveness.lostAfterSeconds | quote }}
{{- end -}}

{{/* A component's extra variables (values: <component>.extraEnv), as given. */}}
{{- define "conductor.extraEnv" -}}
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A pod's scrape annotations, under its template's metadata; nothing when metrics are off. */}}
{{- define "conductor.metricsAnnotations" -}}
{{- with .Values.metrics.port -}}
annotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ include "conductor.str" . | quote }}
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
image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- end -}}

{{/* Scheduling of a component's pods: its own nodeSelector/tolerations/affinity, else the
chart-wide ones (an arm64-only cluster sets them once). */}}
{{- define "conductor.placement" -}}
{{- $c := .component -}}
{{- with (default .root.Values.nodeSelector $c.nodeSelector) }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default .root.Values.tolerations $c.tolerations) }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod and container security for the services that need no root: the image's user 1000. */}}
{{- define "conductor.podSecurity" -}}
securityContext: {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "conductor.containerSecurity" -}}
securityContext: {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}
