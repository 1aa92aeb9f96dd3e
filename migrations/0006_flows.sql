-- Flows: a path, and one immutable version per create/update (its bigserial id is what
-- `/run/fv/{version}` names). Step jobs of a flow point at it with `parent_job`/`root_job`.

CREATE TABLE flows (
    workspace_id text NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    path         text NOT NULL,
    archived     boolean NOT NULL DEFAULT false,
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, path)
);

CREATE TABLE flow_versions (
    id             bigserial PRIMARY KEY,
    workspace_id   text NOT NULL,
    path           text NOT NULL,
    summary        text NOT NULL DEFAULT '',
    description    text NOT NULL DEFAULT '',
    value          jsonb NOT NULL,
    schema         jsonb,
    tag            text,
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    deployment_msg text,
    FOREIGN KEY (workspace_id, path) REFERENCES flows (workspace_id, path) ON DELETE CASCADE
);
CREATE INDEX flow_versions_by_path ON flow_versions (workspace_id, path, id DESC);

-- A flow job keeps its state machine's state in `flow_state` (`flow_status` is the public view
-- derived from it). A step job names its flow (`parent_job`, `root_job`), its module
-- (`flow_step_id`) and its place in the run (`flow_step_key`: module path, iteration, attempt),
-- unique per flow, so a transition that is replayed cannot enqueue a step twice.
-- `flow_step_applied` is set once the flow's state has taken the step's end into account: a
-- transition applies every ended step not applied yet, so steps ending together share one.
-- `flow_enqueued_by` names what triggered the transition that enqueued the step (a step's end,
-- or the flow's own message): when that trigger's message comes back after a crash, the steps
-- it enqueued and that are still queued are published again, and only those.
ALTER TABLE jobs
    ADD COLUMN root_job          uuid,
    ADD COLUMN flow_step_id      text,
    ADD COLUMN flow_step_key     text,
    ADD COLUMN flow_step_applied boolean NOT NULL DEFAULT false,
    ADD COLUMN flow_enqueued_by  text,
    ADD COLUMN flow_state        jsonb;
CREATE UNIQUE INDEX jobs_flow_steps ON jobs (parent_job, flow_step_key)
    WHERE flow_step_key IS NOT NULL;
CREATE INDEX jobs_flow_steps_unapplied ON jobs (parent_job)
    WHERE flow_step_key IS NOT NULL AND NOT flow_step_applied;
