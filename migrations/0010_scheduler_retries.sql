-- A held message JetStream refuses (its tag's queue is full, say) is held again a little later
-- each time — 1 s after the first failure, then 2 s, 4 s … at most 60 s — so that one message
-- that cannot go never holds back the others, nor is sent again at every look. The count of
-- failed tries since it was held; back to 0 once it is published.
ALTER TABLE jobs ADD COLUMN publish_failures integer NOT NULL DEFAULT 0;
