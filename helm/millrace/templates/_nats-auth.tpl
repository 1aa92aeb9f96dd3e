{{/*
The bundled NATS server's users: one per role, each allowed only the subjects its role needs.
These are the permissions of nats/auth.conf, which `millrace dev` and the tests run with and
docs/nats-security.md explains line by line; scripts/helm-check.sh fails when the two differ,
so change both together. Passwords are the server's environment variables
(MILLRACE_NATS_<ROLE>_PASSWORD, from the credentials Secret), never part of the config.

Rendered by the NATS chart (nats.config.merge.authorization in values.yaml): the context is
that chart's, whose .Values are this chart's nats values.
*/}}
{{- define "millrace.natsAuthorization" -}}
{{- $users := .Values.auth.users -}}
users:
  - user: {{ $users.api | quote }}
    password: "<< $MILLRACE_NATS_API_PASSWORD >>"
    permissions:
      publish:
        allow:
          - "millrace.jobs.>"
          - "millrace.events.>"
          - "millrace.control.cancel.*"
          - "millrace.control.invalidate"
          - "millrace.job.*.done"
          - "$JS.API.STREAM.MSG.DELETE.MILLRACE_JOBS"
          - "$JS.API.CONSUMER.INFO.MILLRACE_JOBS.*"
      subscribe:
        allow: ["millrace.job.*.*", "millrace.control.invalidate", "_INBOX_api.>"]
  - user: {{ $users.worker | quote }}
    password: "<< $MILLRACE_NATS_WORKER_PASSWORD >>"
    permissions:
      publish:
        allow:
          - "millrace.jobs.>"
          - "millrace.events.>"
          - "millrace.job.*.*"
          - "millrace.control.cancel.*"
          - "$JS.API.STREAM.INFO.MILLRACE_JOBS"
          - "$JS.API.CONSUMER.CREATE.MILLRACE_JOBS.>"
          - "$JS.API.CONSUMER.DURABLE.CREATE.MILLRACE_JOBS.>"
          - "$JS.API.CONSUMER.INFO.MILLRACE_JOBS.>"
          - "$JS.API.CONSUMER.MSG.NEXT.MILLRACE_JOBS.>"
          - "$JS.ACK.MILLRACE_JOBS.>"
      subscribe:
        allow: ["millrace.control.cancel.*", "_INBOX_worker.>"]
  - user: {{ $users.migrate | quote }}
    password: "<< $MILLRACE_NATS_MIGRATE_PASSWORD >>"
    permissions:
      publish:
        allow: ["$JS.API.>"]
      subscribe:
        allow: ["_INBOX_migrate.>"]
  - user: {{ $users.events | quote }}
    password: "<< $MILLRACE_NATS_EVENTS_PASSWORD >>"
    permissions:
      publish:
        allow:
          - "$JS.API.INFO"
          - "$JS.API.STREAM.NAMES"
          - "$JS.API.STREAM.INFO.MILLRACE_EVENTS"
          - "$JS.API.STREAM.MSG.GET.MILLRACE_EVENTS"
          - "$JS.API.DIRECT.GET.MILLRACE_EVENTS.>"
          - "$JS.API.CONSUMER.CREATE.MILLRACE_EVENTS"
          - "$JS.API.CONSUMER.CREATE.MILLRACE_EVENTS.>"
          - "$JS.API.CONSUMER.DURABLE.CREATE.MILLRACE_EVENTS.>"
          - "$JS.API.CONSUMER.INFO.MILLRACE_EVENTS.>"
          - "$JS.API.CONSUMER.DELETE.MILLRACE_EVENTS.>"
          - "$JS.API.CONSUMER.NAMES.MILLRACE_EVENTS"
          - "$JS.API.CONSUMER.LIST.MILLRACE_EVENTS"
          - "$JS.API.CONSUMER.MSG.NEXT.MILLRACE_EVENTS.>"
          - "$JS.ACK.MILLRACE_EVENTS.>"
          - "$JS.FC.MILLRACE_EVENTS.>"
      subscribe:
        allow: ["millrace.events.>", "_INBOX.>"]
{{- end }}

{{/*
One variable of the nats-server container: a role's password from the credentials Secret.
Rendered by the NATS chart (nats.container.env in values.yaml). Takes (list <NATS chart
context> "api").
*/}}
{{- define "millrace.natsServerPassword" -}}
valueFrom:
  secretKeyRef:
    name: {{ include "millrace.natsAuthSecret" (index . 0) }}
    key: {{ include "millrace.natsSecretKey" (dict "role" (index . 1) "method" "password") }}
{{- end }}

{{/*
The Secret holding the NATS credentials: nats.auth.existingSecret, else the chart's own.
Takes a context whose .Values are the nats values (see millrace.natsFullname), so that the
NATS chart and this one name the same Secret.
*/}}
{{- define "millrace.natsAuthSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "millrace.natsFullname" .)) }}
{{- end }}

{{/* The key of a role's credential in that Secret. Takes (dict "role" "api" "method" "password"). */}}
{{- define "millrace.natsSecretKey" -}}
{{- printf "MILLRACE_NATS_%s_%s" (upper .role) (upper .method) }}
{{- end }}

{{/*
Route authentication of the clustered bundled NATS (nats.config.cluster.enabled). Routes are
trusted server-to-server links: a route sees every message of every account and the users'
permissions do not apply to it, so without authentication any pod reaching port 6222 could
join as a route and read or publish anything. Every server therefore accepts routes only as
user "route" with the password MILLRACE_NATS_ROUTE_PASSWORD of the credentials Secret.

A server dials its peers with the credentials of the route URL (it does not use the
cluster's authorization block for that), and nats.conf cannot build a string out of a
variable. Each route URL is therefore an environment variable of the nats container,
MILLRACE_NATS_ROUTE_URL_<i>, that the kubelet assembles from $(MILLRACE_NATS_ROUTE_PASSWORD):
the password is in neither the ConfigMap nor the pod spec. (The NATS chart's own
config.cluster.routeURLs.user/password would write it into the ConfigMap.)

Rendered by the NATS chart (nats.config.cluster.merge and nats.container.env in values.yaml):
the context is that chart's, whose .Values are this chart's nats values with the NATS chart's
defaults (statefulSet.name, headlessService.name) filled in.
*/}}
{{- define "millrace.natsRouteUser" -}}
route
{{- end }}

{{/* The variable holding the URL of route i. Takes the index. */}}
{{- define "millrace.natsRouteVar" -}}
{{- printf "MILLRACE_NATS_ROUTE_URL_%d" (int .) }}
{{- end }}

{{/* The cluster's authorization block: the only credentials a route is accepted with. */}}
{{- define "millrace.natsClusterAuthorization" -}}
user: {{ include "millrace.natsRouteUser" . | quote }}
password: "<< $MILLRACE_NATS_ROUTE_PASSWORD >>"
{{- end }}

{{/* The cluster's routes: one variable per server (see millrace.natsRouteEnv). */}}
{{- define "millrace.natsClusterRoutes" -}}
{{- range $i := until (int .Values.config.cluster.replicas) }}
- "<< ${{ include "millrace.natsRouteVar" $i }} >>"
{{- end }}
{{- end }}

{{/*
The nats container's route variables, when clustered: the route password from the
credentials Secret, then each route URL with it. The NATS chart lists container.env sorted
by name, so MILLRACE_NATS_ROUTE_PASSWORD comes before the URLs that refer to it, as the
kubelet's $(VAR) expansion requires. Hosts and scheme are those the NATS chart gives its own
route URLs (config/cluster.yaml).
*/}}
{{- define "millrace.natsRouteEnv" -}}
{{- $c := .Values.config.cluster }}
{{- if $c.enabled }}
MILLRACE_NATS_ROUTE_PASSWORD:
  {{- include "millrace.natsServerPassword" (list . "route") | nindent 2 }}
{{- $scheme := ternary "tls" "nats" $c.tls.enabled }}
{{- $domain := .Values.headlessService.name }}
{{- if $c.routeURLs.useFQDN }}
{{- $domain = printf "%s.%s.svc.%s" $domain (.Values.namespaceOverride | default .Release.Namespace) $c.routeURLs.k8sClusterDomain }}
{{- end }}
{{- range $i := until (int $c.replicas) }}
{{ include "millrace.natsRouteVar" $i }}: {{ printf "%s://%s:$(MILLRACE_NATS_ROUTE_PASSWORD)@%s-%d.%s:%d" $scheme (include "millrace.natsRouteUser" $) $.Values.statefulSet.name $i $domain (int $c.port) | quote }}
{{- end }}
{{- end }}
{{- end }}
