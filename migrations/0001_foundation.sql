-- Foundation: identity, scripts and the job history.
-- Applied once by `millrace migrate`; never edit after it has landed, add a new file instead.

CREATE TABLE instance_settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE workspaces (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    email         text PRIMARY KEY,
    name          text,
    password_hash text,
    super_admin   boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE workspace_members (
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    email        text NOT NULL REFERENCES users (email) ON DELETE CASCADE,
    username     text NOT NULL,
    is_admin     boolean NOT NULL DEFAULT false,
    operator     boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, email),
    UNIQUE (workspace_id, username)
);

-- Only the SHA-256 of a token is kept; `prefix` (its first 10 characters) names it in listings.
CREATE TABLE tokens (
    hash         bytea PRIMARY KEY,
    prefix       text NOT NULL,
    email        text NOT NULL REFERENCES users (email) ON DELETE CASCADE,
    label        text,
    scopes       text[],
    workspace_id text REFERENCES workspaces (id) ON DELETE CASCADE,
    expiration   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);
CREATE INDEX tokens_owner ON tokens (email, prefix);

-- One row per immutable script version.
CREATE TABLE scripts (
    workspace_id  text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    hash          text NOT NULL,
    path          text NOT NULL,
    parent_hashes text[] NOT NULL DEFAULT '{}',
    content       text NOT NULL,
    language      text NOT NULL,
    summary       text NOT NULL DEFAULT '',
    description   text NOT NULL DEFAULT '',
    schema        jsonb,
    tag           text,
    timeout_s     integer,
    kind          text NOT NULL DEFAULT 'script',
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    archived      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (workspace_id, hash)
);
CREATE INDEX scripts_by_path ON scripts (workspace_id, path, created_at DESC);

-- One row per job, from queued to completed. `status` is the single source of truth;
-- the API's `running`/`success`/`canceled` fields are derived from it.
CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    workspace_id     text NOT NULL,
    job_kind         text NOT NULL,
    script_path      text,
    script_hash      text,
    flow_version     bigint,
    args             jsonb NOT NULL,
    created_by       text NOT NULL,
    permissioned_as  text NOT NULL,
    created_at       timestamptz NOT NULL,
    scheduled_for    timestamptz,
    started_at       timestamptz,
    completed_at     timestamptz,
    duration_ms      bigint,
    status           text NOT NULL CHECK (status IN ('queued', 'running', 'success', 'failure', 'canceled')),
    cancel_requested boolean NOT NULL DEFAULT false,
    canceled_by      text,
    canceled_reason  text,
    result           jsonb,
    logs             text,
    language         text,
    tag              text NOT NULL,
    worker           text,
    attempts         integer NOT NULL DEFAULT 0,
    timeout_s        integer,
    parent_job       uuid,
    flow_status      jsonb
);
CREATE INDEX jobs_runs ON jobs (workspace_id, created_at DESC);
CREATE INDEX jobs_by_path ON jobs (workspace_id, script_path, created_at DESC);
CREATE INDEX jobs_by_hash ON jobs (workspace_id, script_hash);
CREATE INDEX jobs_unfinished ON jobs (status) WHERE status IN ('queued', 'running');
