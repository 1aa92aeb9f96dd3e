-- A delivery (or idempotency) key now lives in the row of the job it started: the claim is part
-- of the job's own INSERT (a unique index refuses a second row with the key) instead of a row
-- in a table of its own with a statement joining the two, which cost every keyed request about
-- as much again in PostgreSQL as the job itself.
--
-- `once_key` is the SHA-256 of workspace id, NUL, scope, NUL, key (UTF-8): fixed-size and
-- compared bytewise. `once_key(workspace, scope, key)` computes it, for this migration and for
-- whoever looks a delivery up by hand. A repeat before `once_until` answers the row's job; a
-- claim that finds an expired key takes it over (clearing it from the older row first); until then
-- an expired key stays in its row, harmless. Building the index reads `jobs` once, under the
-- migration's lock: on a large table, expect inserts to wait that long.
CREATE FUNCTION once_key(workspace text, scope text, key text) RETURNS bytea
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    AS $$ SELECT sha256(convert_to(workspace, 'UTF8') || decode('00', 'hex')
                        || convert_to(scope, 'UTF8') || decode('00', 'hex')
                        || convert_to(key, 'UTF8')) $$;

ALTER TABLE jobs
    ADD COLUMN once_key   bytea,
    ADD COLUMN once_until timestamptz,
    -- NOT VALID: the new columns are empty, so no need to read every job to prove it; the
    -- rows written from here on (the UPDATE below included) are checked.
    ADD CONSTRAINT jobs_once_key_until CHECK ((once_key IS NULL) = (once_until IS NULL)) NOT VALID;
CREATE UNIQUE INDEX jobs_once_key ON jobs (once_key) WHERE once_key IS NOT NULL;

-- Live claims move to their jobs; a claim whose job is gone goes with the table.
UPDATE jobs j SET once_key = once_key(d.workspace_id, d.scope, d.key), once_until = d.expires_at
    FROM delivery_keys d
    WHERE d.job_id = j.id AND d.expires_at > now();
DROP TABLE delivery_keys;
