{{/*
Names, labels and the values every Millrace pod shares.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "millrace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: "<release>-<chart>", or the release name alone when it
already contains the chart name. Truncated to 63 characters (DNS label limit).
*/}}
{{- define "millrace.fullname" -}}
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

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "millrace.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the life of a release. Takes the root context. */}}
{{- define "millrace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "millrace.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels of every resource. Takes the root context. */}}
{{- define "millrace.labels" -}}
helm.sh/chart: {{ include "millrace.chart" . }}
{{ include "millrace.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: millrace
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a component's resources. Takes (dict "ctx" $ "component" "api"). */}}
{{- define "millrace.componentLabels" -}}
{{ include "millrace.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of a component. Takes (dict "ctx" $ "component" "api"). */}}
{{- define "millrace.componentSelectorLabels" -}}
{{ include "millrace.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Resource names. */}}
{{- define "millrace.apiName" -}}
{{- printf "%s-api" (include "millrace.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "millrace.configMapName" -}}
{{- printf "%s-config" (include "millrace.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "millrace.postgresqlName" -}}
{{- printf "%s-postgresql" (include "millrace.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "millrace.minioName" -}}
{{- printf "%s-minio" (include "millrace.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Deployment name of a worker group. Takes (dict "ctx" $ "group" $group). */}}
{{- define "millrace.workerName" -}}
{{- printf "%s-worker-%s" (include "millrace.fullname" .ctx) .group.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding DATABASE_URL, SUPERADMIN_SECRET, S3 keys and SMTP_PASSWORD. */}}
{{- define "millrace.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "millrace.fullname" . }}
{{- end }}
{{- end }}

{{- define "millrace.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "millrace.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Millrace image reference. */}}
{{- define "millrace.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The full name the official NATS chart gives its resources (its own "nats.fullname" logic,
evaluated with this release and the nats.* values).
*/}}
{{- define "millrace.natsFullname" -}}
{{- if .Values.nats.fullnameOverride }}
{{- .Values.nats.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "nats" .Values.nats.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* NATS_URL: the bundled NATS Service, or nats.url. */}}
{{- define "millrace.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc:4222" (include "millrace.natsFullname" .) .Release.Namespace }}
{{- else }}
{{- required "nats.url is required when nats.enabled is false" .Values.nats.url }}
{{- end }}
{{- end }}

{{/* host:port of the NATS monitoring endpoint, for the KEDA JetStream scaler. */}}
{{- define "millrace.natsMonitoringEndpoint" -}}
{{- if .Values.nats.monitoringEndpoint }}
{{- .Values.nats.monitoringEndpoint }}
{{- else if .Values.nats.enabled }}
{{- printf "%s-headless.%s.svc.cluster.local:8222" (include "millrace.natsFullname" .) .Release.Namespace }}
{{- else }}
{{- required "nats.monitoringEndpoint (host:port of the NATS monitoring port) is required for KEDA autoscaling with an external NATS" .Values.nats.monitoringEndpoint }}
{{- end }}
{{- end }}

{{/* NATS_STREAM_REPLICAS: explicit, or the bundled cluster size capped at 3, or 1. */}}
{{- define "millrace.natsStreamReplicas" -}}
{{- if gt (int .Values.config.natsStreamReplicas) 0 }}
{{- .Values.config.natsStreamReplicas }}
{{- else if and .Values.nats.enabled .Values.nats.config.cluster.enabled }}
{{- min 3 (int .Values.nats.config.cluster.replicas) }}
{{- else }}
{{- 1 }}
{{- end }}
{{- end }}

{{/* S3_ENDPOINT: the bundled MinIO Service, or s3.endpoint (may be empty: no storage). */}}
{{- define "millrace.s3Endpoint" -}}
{{- if .Values.minio.enabled }}
{{- printf "http://%s.%s.svc:9000" (include "millrace.minioName" .) .Release.Namespace }}
{{- else }}
{{- .Values.s3.endpoint }}
{{- end }}
{{- end }}

{{/* BASE_INTERNAL_URL default: the api Service inside the cluster. */}}
{{- define "millrace.internalUrl" -}}
{{- if .Values.config.baseInternalUrl }}
{{- .Values.config.baseInternalUrl }}
{{- else }}
{{- printf "http://%s:%d" (include "millrace.apiName" .) (int .Values.api.service.port) }}
{{- end }}
{{- end }}

{{/* BASE_URL default: the first Ingress host (https when it has TLS), else the Service. */}}
{{- define "millrace.baseUrl" -}}
{{- if .Values.config.baseUrl }}
{{- .Values.config.baseUrl | trimSuffix "/" }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := (first .Values.ingress.hosts).host }}
{{- $tls := false }}
{{- range .Values.ingress.tls }}
{{- if has $host .hosts }}{{ $tls = true }}{{ end }}
{{- end }}
{{- printf "%s://%s" (ternary "https" "http" $tls) $host }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "millrace.apiName" .) .Release.Namespace (int .Values.api.service.port) }}
{{- end }}
{{- end }}

{{/* True (non-empty) when object storage is configured at all. */}}
{{- define "millrace.s3Enabled" -}}
{{- if or .Values.minio.enabled .Values.s3.endpoint }}true{{ end }}
{{- end }}

{{/*
Environment of every Millrace container (api, worker, migrate): the ConfigMap, plus the
secret variables read one by one from the Secret. With an existing Secret the optional keys
are marked optional, so a Secret without SMTP_PASSWORD still starts.
*/}}
{{- define "millrace.envFrom" -}}
- configMapRef:
    name: {{ include "millrace.configMapName" . }}
{{- end }}

{{- define "millrace.secretEnv" -}}
{{- $secret := include "millrace.secretName" . }}
{{- $existing := .Values.secrets.existingSecret -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: DATABASE_URL
- name: SUPERADMIN_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: SUPERADMIN_SECRET
      {{- if $existing }}
      optional: true
      {{- end }}
{{- if include "millrace.s3Enabled" . }}
{{- range list "S3_ACCESS_KEY" "S3_SECRET_KEY" }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
      {{- if or $existing (not $.Values.minio.enabled) }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}
{{- if .Values.smtp.host }}
- name: SMTP_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: SMTP_PASSWORD
      optional: true
{{- end }}
{{- end }}

{{/* The migrate init container of api and worker pods. */}}
{{- define "millrace.migrateInitContainer" -}}
{{- if .Values.migrations.enabled -}}
- name: migrate
  image: {{ include "millrace.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["migrate"]
  envFrom:
    {{- include "millrace.envFrom" . | nindent 4 }}
  env:
    {{- include "millrace.secretEnv" . | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.migrations.resources | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end }}

{{/*
Annotations that roll the pods when the configuration they read changes.
*/}}
{{- define "millrace.configChecksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret-inputs: {{ list .Values.secrets .Values.database .Values.s3 .Values.smtp.password .Values.postgresql.auth | toJson | sha256sum }}
{{- end }}
{{- end }}

{{/*
Deep merge of two maps where every key of "over" wins, including false and 0 (sprig's
mergeOverwrite skips those). Returns JSON. Takes (dict "base" $map "over" $map).
*/}}
{{- define "millrace.merge" -}}
{{- $out := deepCopy .base }}
{{- range $k, $v := .over }}
{{- if and (kindIs "map" $v) (kindIs "map" (get $out $k)) }}
{{- $_ := set $out $k (include "millrace.merge" (dict "base" (get $out $k) "over" $v) | fromJson) }}
{{- else }}
{{- $_ := set $out $k $v }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The settings of each worker group: `worker` overridden by the group's own keys. */}}
{{- define "millrace.workerGroups" -}}
{{- $groups := list }}
{{- range .Values.workerGroups }}
{{- $groups = append $groups (include "millrace.merge" (dict "base" $.Values.worker "over" .) | fromJson) }}
{{- end }}
{{- toJson (dict "groups" $groups) }}
{{- end }}

{{/* NetworkPolicy egress rule for DNS, wherever the cluster runs it. */}}
{{- define "millrace.np.dns" -}}
# DNS, wherever the cluster runs it.
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{/*
Proxies that append to X-Forwarded-For in front of the API: the explicit value, else 1 behind
the chart's Ingress, else empty (the binary's default: the connection's peer).
*/}}
{{- define "millrace.trustedProxyHops" -}}
{{- $hops := .Values.config.trustedProxyHops -}}
{{- if ne (toString $hops) "" -}}
{{- $hops -}}
{{- else if .Values.ingress.enabled -}}
1
{{- end -}}
{{- end }}
