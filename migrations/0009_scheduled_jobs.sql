-- A job scheduled for later is not published to the work queue, where it would stay
-- ack-pending until due (and, with `max_ack_pending` of them, stall its tag): its message waits
-- in its own row, and a scheduler in every API process publishes it when `publish_at` comes
-- (claiming rows with FOR UPDATE SKIP LOCKED, so that replicas never publish one twice).
-- A sleeping flow's wake-up waits on the flow job's row the same way. `publish_msg_id` is the
-- message's Nats-Msg-Id when it is not the job id (a wake-up's `<flow>:wake:<ms>`).
ALTER TABLE jobs
    ADD COLUMN publish_at       timestamptz,
    ADD COLUMN publish_envelope jsonb,
    ADD COLUMN publish_msg_id   text;
CREATE INDEX jobs_held ON jobs (publish_at) WHERE publish_at IS NOT NULL;
