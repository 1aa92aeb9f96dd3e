-- Permissions: groups, folders, per-item sharing, token bookkeeping, who triggered a job.

CREATE TABLE groups (
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         text NOT NULL,
    summary      text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, name)
);

CREATE TABLE group_members (
    workspace_id text NOT NULL,
    group_name   text NOT NULL,
    username     text NOT NULL,
    PRIMARY KEY (workspace_id, group_name, username),
    FOREIGN KEY (workspace_id, group_name) REFERENCES groups (workspace_id, name) ON DELETE CASCADE
);

-- `owners` and the keys of `extra_perms` are `u/<username>` or `g/<group>`;
-- an extra_perms value of true grants write, false grants read.
CREATE TABLE folders (
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name         text NOT NULL,
    owners       text[] NOT NULL DEFAULT '{}',
    extra_perms  jsonb NOT NULL DEFAULT '{}',
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, name)
);

-- Sharing of one script or flow path with a user or group.
CREATE TABLE item_perms (
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('script', 'flow')),
    path         text NOT NULL,
    grantee      text NOT NULL,
    write        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (workspace_id, kind, path, grantee)
);

-- Set once the "expiring soon" notice went out, so every replica's sweep sends it only once.
ALTER TABLE tokens ADD COLUMN expiring_notified_at timestamptz;
CREATE INDEX tokens_expiration ON tokens (expiration) WHERE expiration IS NOT NULL;

-- The token that started a job (an id derived from its hash), so a webhook-specific token can
-- poll the jobs it started and nothing else.
ALTER TABLE jobs ADD COLUMN started_by_token text;
