{{/* The text of NOTES.txt, a named template so that scripts/helm-check.sh can render it without a cluster. */}}
{{- define "millrace.notes" -}}
{{- $base := include "millrace.baseUrl" . -}}
{{- $secret := include "millrace.secretName" . -}}
Millrace {{ .Chart.AppVersion }} is installed as release "{{ .Release.Name }}" in namespace "{{ .Release.Namespace }}".

API pods first run `millrace migrate` (init container): they start serving once PostgreSQL
and NATS are up and the schema is current. Watch them with:

  kubectl -n {{ .Release.Namespace }} get pods -l app.kubernetes.io/instance={{ .Release.Name }} -w

1. Reach the API
{{- if .Values.ingress.enabled }}

  Through the Ingress: {{ $base }}
{{- else }}

  No Ingress is enabled (ingress.enabled=false). From your machine:

  kubectl -n {{ .Release.Namespace }} port-forward svc/{{ include "millrace.apiName" . }} 8000:{{ .Values.api.service.port }}
  export MILLRACE_URL=http://127.0.0.1:8000
{{- end }}
{{- if .Values.ingress.enabled }}

  export MILLRACE_URL={{ $base }}
{{- end }}

2. Get the first token

  The superadmin secret (SUPERADMIN_SECRET) is in the Secret "{{ $secret }}":

  export SUPERADMIN=$(kubectl -n {{ .Release.Namespace }} get secret {{ $secret }} -o jsonpath='{.data.SUPERADMIN_SECRET}' | base64 -d)

  Create an admin user and a workspace, then log in for the admin's token (change the password):

  curl -fsS -X POST "$MILLRACE_URL/api/users/create" -H "Authorization: Bearer $SUPERADMIN" \
       -H 'Content-Type: application/json' \
       -d '{"email":"admin@example.com","password":"change-me","super_admin":true}'
  curl -fsS -X POST "$MILLRACE_URL/api/workspaces/create" -H "Authorization: Bearer $SUPERADMIN" \
       -H 'Content-Type: application/json' -d '{"id":"main","name":"Main"}'
  curl -fsS -X POST "$MILLRACE_URL/api/w/main/workspaces/add_user" -H "Authorization: Bearer $SUPERADMIN" \
       -H 'Content-Type: application/json' -d '{"email":"admin@example.com","username":"admin","is_admin":true}'
  export TOKEN=$(curl -fsS -X POST "$MILLRACE_URL/api/auth/login" -H 'Content-Type: application/json' \
       -d '{"email":"admin@example.com","password":"change-me"}')

  Narrower tokens (e.g. one that can only trigger one webhook) come from
  POST /api/users/tokens/create with {"label": ..., "scopes": ["jobs:run:scripts:<path>"]}.

3. Webhook URLs{{ if not .Values.ingress.enabled }} (in-cluster; from outside, replace the host with $MILLRACE_URL){{ end }}

  {{ $base }}/api/w/<workspace>/jobs/run/p/<script path>               (async, 201 + job id)
  {{ $base }}/api/w/<workspace>/jobs/run_wait_result/p/<script path>   (sync, the result)
  {{ $base }}/api/w/<workspace>/jobs/run_and_stream/p/<script path>    (SSE)

  e.g. curl -X POST "$MILLRACE_URL/api/w/main/jobs/run_wait_result/p/u/admin/hello" \
            -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d '{"name":"world"}'

4. Workers
{{- range $g := (include "millrace.workerGroups" . | fromJson).groups }}
  {{ include "millrace.workerName" (dict "ctx" $ "group" $g) }}: tags {{ join "," $g.tags }}, {{ $g.slots }} slots per pod,
  {{- if not $g.autoscaling.enabled }} {{ $g.replicas }} replica(s)
  {{- else if $g.autoscaling.keda.enabled }} KEDA on pending jobs, {{ $g.autoscaling.minReplicas }}-{{ $g.autoscaling.maxReplicas }} pods
  {{- else }} CPU HPA, {{ max 1 (int $g.autoscaling.minReplicas) }}-{{ $g.autoscaling.maxReplicas }} pods
  {{- end }}
{{- end }}

  In-cluster callback URL for scripts (BASE_INTERNAL_URL): {{ include "millrace.internalUrl" . }}
{{- if .Values.nats.enabled }}

5. Job events for other systems

  NATS user "{{ .Values.nats.auth.users.events }}" may only read the events (subjects millrace.events.>, stream
  MILLRACE_EVENTS) at {{ include "millrace.natsUrl" . }}. Its password:

  kubectl -n {{ .Release.Namespace }} get secret {{ include "millrace.natsAuthSecret" (dict "Values" .Values.nats "Release" .Release) }} -o jsonpath='{.data.MILLRACE_NATS_EVENTS_PASSWORD}' | base64 -d
{{- if .Values.networkPolicy.enabled }}

  The NetworkPolicy admits to NATS only the release's pods and networkPolicy.natsClientsFrom
  ({{ len .Values.networkPolicy.natsClientsFrom }} peer(s)): add other systems' pods or namespaces there.
{{- end }}
{{- end }}
{{- if not .Values.networkPolicy.enabled }}

##########################################################################################
WARNING: networkPolicy.enabled=false: NO NetworkPolicy limits this release's pods.
  Scripts run by the workers can reach the cloud metadata endpoint (169.254.169.254, and
  with it often the node's cloud credentials), every Service and pod of the cluster
  (PostgreSQL, MinIO, NATS's route and monitoring ports, other applications) and the whole
  internet, whatever networkPolicy.allowWorkerInternetEgress says. Turn it back on
  (networkPolicy.enabled=true, the default) unless something else restricts this traffic.
##########################################################################################
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.tls) }}

WARNING: the Ingress has no TLS section; tokens would cross the network in clear text.
{{- end }}
{{- if or .Values.postgresql.enabled .Values.minio.enabled }}

NOTE: the bundled{{ if .Values.postgresql.enabled }} PostgreSQL{{ end }}{{ if and .Values.postgresql.enabled .Values.minio.enabled }} and{{ end }}{{ if .Values.minio.enabled }} MinIO{{ end }} run as single pods for a quick start;
for production point the chart at managed services (see docs/kubernetes.md).
{{- end }}
{{- end }}
