-- A script version may ask for a dedicated worker process (Windmill's `dedicated_worker`): its
-- jobs run one after another in a long-lived process per worker slot that imported the script
-- once, so module state persists between them.
ALTER TABLE scripts ADD COLUMN dedicated_worker boolean NOT NULL DEFAULT false;
