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

{{/* The Secret holding DATABASE_URL, SUPERADMIN_SECRET, ENCRYPTION_KEY, S3 keys and SMTP_PASSWORD. */}}
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
The full name the official NATS chart gives its resources (its own "nats.fullname" logic).
Takes a context whose .Values are the nats values: the NATS chart's own context, or
(dict "Values" .Values.nats "Release" .Release) from this chart.
*/}}
{{- define "millrace.natsFullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "nats" .Values.nameOverride }}
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
{{- printf "nats://%s.%s.svc:4222" (include "millrace.natsFullname" (dict "Values" .Values.nats "Release" .Release)) .Release.Namespace }}
{{- else }}
{{- required "nats.url is required when nats.enabled is false" .Values.nats.url }}
{{- end }}
{{- end }}

{{/* host:port of the NATS monitoring endpoint, for the KEDA JetStream scaler. */}}
{{- define "millrace.natsMonitoringEndpoint" -}}
{{- if .Values.nats.monitoringEndpoint }}
{{- .Values.nats.monitoringEndpoint }}
{{- else if .Values.nats.enabled }}
{{- printf "%s-headless.%s.svc.cluster.local:8222" (include "millrace.natsFullname" (dict "Values" .Values.nats "Release" .Release)) .Release.Namespace }}
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

{{/* Environment of every Millrace container: the ConfigMap of non-secret settings. */}}
{{- define "millrace.envFrom" -}}
- configMapRef:
    name: {{ include "millrace.configMapName" . }}
{{- end }}

{{/*
What one Millrace process reads from Secrets, and nothing more, as JSON {"files": [{"name",
"secret", "key"}]}: "name" is the variable (the file's name), "key" the Secret's key. Workers
and migrate get DATABASE_URL and their role's NATS credential; only the api gets the
superadmin secret, the encryption key, the S3 keys and the SMTP password. Takes (dict "ctx" $ "role" "api"),
role one of api, worker, migrate.
*/}}
{{- define "millrace.secretFiles" -}}
{{- $v := .ctx.Values }}
{{- $main := include "millrace.secretName" .ctx }}
{{- $names := list "DATABASE_URL" }}
{{- if eq .role "api" }}
{{- $names = concat $names (list "SUPERADMIN_SECRET" "ENCRYPTION_KEY") }}
{{- if include "millrace.s3Enabled" .ctx }}
{{- $names = concat $names (list "S3_ACCESS_KEY" "S3_SECRET_KEY") }}
{{- end }}
{{- if and $v.smtp.host $v.smtp.username }}
{{- $names = append $names "SMTP_PASSWORD" }}
{{- end }}
{{- end }}
{{- $files := list }}
{{- range $names }}
{{- $files = append $files (dict "name" . "secret" $main "key" .) }}
{{- end }}
{{- $method := $v.nats.auth.method }}
{{- if ne $method "none" }}
{{- $natsSecret := include "millrace.natsAuthSecret" (dict "Values" $v.nats "Release" .ctx.Release) }}
{{- $key := include "millrace.natsSecretKey" (dict "role" .role "method" $method) }}
{{- $files = append $files (dict "name" (printf "NATS_%s" (upper $method)) "secret" $natsSecret "key" $key) }}
{{- end }}
{{- toJson (dict "files" $files) }}
{{- end }}

{{/* Where a container's secret files are mounted. */}}
{{- define "millrace.secretDir" -}}
/etc/millrace/secrets
{{- end }}

{{/*
The environment that points a Millrace process at its secret files: <NAME>_FILE for each, but
NATS_CREDS, which is a path already; NATS_USER with password logins. Takes (dict "ctx" $
"role" "api").
*/}}
{{- define "millrace.secretEnv" -}}
{{- $auth := .ctx.Values.nats.auth }}
{{- if eq $auth.method "password" }}
- name: NATS_USER
  value: {{ required (printf "nats.auth.users.%s is required" .role) (get $auth.users .role) | quote }}
{{- end }}
{{- range (include "millrace.secretFiles" . | fromJson).files }}
- name: {{ ternary .name (printf "%s_FILE" .name) (eq .name "NATS_CREDS") }}
  value: {{ printf "%s/%s" (include "millrace.secretDir" $) .name | quote }}
{{- end }}
{{- end }}

{{/* The volume holding one process's secret files. Takes (dict "ctx" $ "role" "api"). */}}
{{- define "millrace.secretVolume" -}}
{{- $bySecret := dict }}
{{- range (include "millrace.secretFiles" . | fromJson).files }}
{{- $_ := set $bySecret .secret (append (get $bySecret .secret | default list) (dict "key" .key "path" .name)) }}
{{- end -}}
- name: secrets-{{ .role }}
  projected:
    # Owner-only files: with fsGroup the kubelet adds group read for the pod's own group.
    # Jobs of isolated workers run as other users with no supplementary group, so they can
    # read none of them.
    defaultMode: 0400
    sources:
      {{- range $secret, $items := $bySecret }}
      - secret:
          name: {{ $secret }}
          items:
            {{- toYaml $items | nindent 12 }}
      {{- end }}
{{- end }}

{{/*
The secret volumes of an api or worker pod: the main container's, and the migrate init
container's when migrations run. Takes (dict "ctx" $ "role" "api").
*/}}
{{- define "millrace.secretVolumes" -}}
{{ include "millrace.secretVolume" . }}
{{- if .ctx.Values.migrations.enabled }}
{{ include "millrace.secretVolume" (dict "ctx" .ctx "role" "migrate") }}
{{- end }}
{{- end }}

{{/* The mount of a process's secret files. Takes the role. */}}
{{- define "millrace.secretMount" -}}
- name: secrets-{{ . }}
  mountPath: {{ include "millrace.secretDir" . }}
  readOnly: true
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
    {{- include "millrace.secretEnv" (dict "ctx" . "role" "migrate") | nindent 4 }}
    {{- /* Every group's tags get their consumer before any worker of the group runs: the API
    refuses jobs for a tag without one, and a group scaled to zero (KEDA) scales up only on
    its consumers' pending jobs. */}}
    {{- $tags := list }}
    {{- range $g := (include "millrace.workerGroups" . | fromJson).groups }}
    {{- $tags = concat $tags $g.tags }}
    {{- end }}
    - name: WORKER_TAGS
      value: {{ $tags | uniq | join "," | quote }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.migrations.resources | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- include "millrace.secretMount" "migrate" | nindent 4 }}
{{- end }}
{{- end }}

{{/*
Annotations that roll the pods when the configuration they read changes.
*/}}
{{- define "millrace.configChecksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret-inputs: {{ list .Values.secrets .Values.database .Values.s3 .Values.smtp.password .Values.postgresql.auth .Values.nats.auth | toJson | sha256sum }}
{{- end }}
{{- end }}

{{/*
A secret value: the one given in values, else the one the cluster already holds (so generated
values survive upgrades), else the fresh one. Takes (dict "given" "" "old" <the existing
Secret's data> "key" "NAME" "fresh" (randAlphaNum 32)).
*/}}
{{- define "millrace.kept" -}}
{{- .given | default (get .old .key | b64dec) | default .fresh }}
{{- end }}

{{/*
A Secret the chart generates. helm uninstall keeps it, like the data it unlocks. Takes (dict
"ctx" $ "name" "..." "component" "..." "data" <map of plain values>).
*/}}
{{- define "millrace.secret" }}
apiVersion: v1
kind: Secret
metadata:
  name: {{ .name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "millrace.componentLabels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
  annotations:
    helm.sh/resource-policy: keep
type: Opaque
data:
  {{- range $key := keys .data | sortAlpha }}
  {{ $key }}: {{ get $.data $key | b64enc | quote }}
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

{{/* NetworkPolicy egress rule for DNS: to networkPolicy.dns, or to kube-dns. */}}
{{- define "millrace.np.dns" -}}
- to:
    {{- with .Values.networkPolicy.dns }}
    {{- toYaml . | nindent 4 }}
    {{- else }}
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
      podSelector:
        matchLabels:
          k8s-app: kube-dns
    {{- end }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{/* NetworkPolicy egress rule to pods of the namespace. Takes (dict "labels" <YAML> "port" 5432). */}}
{{- define "millrace.np.toPods" -}}
- to:
    - podSelector:
        matchLabels:
          {{- .labels | nindent 10 }}
  ports:
    - port: {{ .port }}
      protocol: TCP
{{- end }}

{{/*
NetworkPolicy egress rule to an external service: the cidrs and peers of
networkPolicy.external.<name>. Without any the install fails, since a rule without
destinations would allow every address. Takes (dict "ctx" $ "name" "s3" "ports" <default>).
*/}}
{{- define "millrace.np.toExternal" -}}
{{- $ext := get .ctx.Values.networkPolicy.external .name }}
{{- $peers := $ext.peers | default list }}
{{- range $ext.cidrs }}
{{- $peers = append $peers (dict "ipBlock" (dict "cidr" .)) }}
{{- end }}
{{- if not $peers }}
{{- fail (printf "networkPolicy.external.%s: give the addresses of the external %s (cidrs or peers), or the NetworkPolicy cannot let pods reach it" .name .name) }}
{{- end -}}
- to:
    {{- toYaml $peers | nindent 4 }}
  ports:
    {{- range ($ext.ports | default .ports) }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}

{{/* NetworkPolicy egress rules to PostgreSQL and NATS, which api and worker pods both use. */}}
{{- define "millrace.np.stores" -}}
{{- $rules := list }}
{{- if .Values.postgresql.enabled }}
{{- $rules = append $rules (include "millrace.np.toPods" (dict "labels" (include "millrace.componentSelectorLabels" (dict "ctx" . "component" "postgresql")) "port" 5432)) }}
{{- else }}
{{- $rules = append $rules (include "millrace.np.toExternal" (dict "ctx" . "name" "postgresql")) }}
{{- end }}
{{- if .Values.nats.enabled }}
{{- $rules = append $rules (include "millrace.np.toPods" (dict "labels" (include "millrace.natsSelectorLabels" .) "port" (include "millrace.natsPort" (dict "ctx" . "name" "nats")))) }}
{{- else }}
{{- $rules = append $rules (include "millrace.np.toExternal" (dict "ctx" . "name" "nats")) }}
{{- end }}
{{- join "\n" $rules }}
{{- end }}

{{/*
A port of the bundled NATS servers: nats.config.<name>.port (the NATS chart's defaults are
part of .Values.nats). Takes (dict "ctx" $ "name" "nats|cluster|monitor").
*/}}
{{- define "millrace.natsPort" -}}
{{- $defaults := dict "nats" 4222 "cluster" 6222 "monitor" 8222 }}
{{- dig "config" .name "port" (get $defaults .name) .ctx.Values.nats | int }}
{{- end }}

{{/* True (non-empty) when a worker group scales with KEDA, which reads the NATS monitoring port. */}}
{{- define "millrace.kedaEnabled" -}}
{{- range (include "millrace.workerGroups" . | fromJson).groups }}
{{- if and .autoscaling.enabled .autoscaling.keda.enabled }}true{{ end }}
{{- end }}
{{- end }}

{{/*
The extra egress rules of api or worker pods: networkPolicy.extraEgress (both) and
networkPolicy.apiExtraEgress / workerExtraEgress (that one only). A host only the api needs
(e.g. internal workspace storage) belongs in apiExtraEgress: what worker pods may reach,
scripts may reach too. Takes (dict "ctx" $ "component" "api|worker").
*/}}
{{- define "millrace.np.extraEgress" -}}
{{- $np := .ctx.Values.networkPolicy }}
{{- $rules := concat ($np.extraEgress | default list) (get $np (printf "%sExtraEgress" .component) | default list) }}
{{- with $rules }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* The selector labels of the bundled NATS servers' pods (the NATS chart's "nats.selectorLabels"). */}}
{{- define "millrace.natsSelectorLabels" -}}
app.kubernetes.io/name: {{ default "nats" .Values.nats.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: nats
{{- end }}

{{/*
NetworkPolicy egress rule to public addresses (the workers' scripts; the api's workspace
stores, on their ports): every address but networkPolicy.workerInternetExcept, split by address
family as ipBlock requires. Takes (dict "ctx" $ "ports" <list, optional: every port>).
*/}}
{{- define "millrace.np.internet" -}}
{{- $except := dict "0.0.0.0/0" list "::/0" list }}
{{- range .ctx.Values.networkPolicy.workerInternetExcept }}
{{- $all := ternary "::/0" "0.0.0.0/0" (contains ":" .) }}
{{- $_ := set $except $all (append (get $except $all) .) }}
{{- end -}}
- to:
    {{- range $cidr, $out := $except }}
    - ipBlock:
        cidr: {{ $cidr }}
        {{- with $out }}
        except:
          {{- toYaml . | nindent 10 }}
        {{- end }}
    {{- end }}
  {{- with .ports }}
  ports:
    {{- range . }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- end }}
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
