-- Object storage (SPEC §7): a workspace's own S3/MinIO bucket. Without a row, the instance
-- default (S3_* variables) applies. The secret key is written by workspace admins and read only
-- by the API to sign requests: no route, log or job ever returns it.

CREATE TABLE workspace_object_storage (
    workspace_id text PRIMARY KEY REFERENCES workspaces (id) ON DELETE CASCADE,
    endpoint     text NOT NULL,
    bucket       text NOT NULL,
    region       text,
    access_key   text NOT NULL,
    secret_key   text NOT NULL,
    updated_by   text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
