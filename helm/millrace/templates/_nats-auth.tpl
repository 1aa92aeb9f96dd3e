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
