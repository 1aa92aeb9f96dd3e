-- Webhook triggers (signature-verified public hooks) and delivery keys (each delivery runs once).
-- Secrets are AES-256-GCM ciphertexts under the instance's ENCRYPTION_KEY (version ‖ nonce ‖
-- ciphertext+tag, bound to the row): the database never holds them in clear.

CREATE TABLE webhook_triggers (
    workspace_id          text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    path                  text NOT NULL,
    runnable_kind         text NOT NULL CHECK (runnable_kind IN ('script', 'flow')),
    runnable_path         text NOT NULL,
    scheme                text NOT NULL,
    -- hmac_sha256 only: {"header", "encoding", "prefix"}.
    scheme_options        jsonb,
    secret                bytea NOT NULL,
    -- The secret before the last rotation, accepted too until previous_secret_until.
    previous_secret       bytea,
    previous_secret_until timestamptz,
    tolerance_secs        integer NOT NULL,
    dedup_window_secs     integer NOT NULL,
    delivery_id_header    text,
    event_header          text,
    sync                  boolean NOT NULL DEFAULT false,
    enabled               boolean NOT NULL DEFAULT true,
    -- The trigger runs as this user: whoever created or last changed it.
    owner_email           text NOT NULL,
    edited_by             text NOT NULL,
    edited_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, path)
);

-- A delivery (or idempotency) key → the job it started, kept `expires_at`: a repeat within the
-- window answers that job instead of starting another. JetStream's own deduplication only
-- covers two minutes; senders retry for hours.
CREATE TABLE delivery_keys (
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    -- Whose key it is: `trigger:<path>` for a trigger's deliveries.
    scope        text NOT NULL,
    key          text NOT NULL,
    job_id       uuid NOT NULL,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (workspace_id, scope, key)
);
CREATE INDEX delivery_keys_expiry ON delivery_keys (expires_at);

-- A workspace's object storage secret key, sealed the same way (bound to the workspace). Rows
-- written before this migration, or by an API without ENCRYPTION_KEY, keep `secret_key` in
-- clear until an API with the key starts and seals them: exactly one of the two is set.
ALTER TABLE workspace_object_storage
    ADD COLUMN secret_key_sealed bytea,
    ALTER COLUMN secret_key DROP NOT NULL,
    ADD CONSTRAINT workspace_object_storage_one_secret_key
        CHECK ((secret_key IS NULL) <> (secret_key_sealed IS NULL));
