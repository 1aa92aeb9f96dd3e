-- One-time login links (`millrace dev` prints one for its admin): the SHA-256 of a short-lived
-- code that the Runs page exchanges once for a login session. Redeeming deletes the row, so a
-- code works once; an expired one is refused and purged.
CREATE TABLE login_codes (
    hash       bytea PRIMARY KEY,
    email      text NOT NULL REFERENCES users (email) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
