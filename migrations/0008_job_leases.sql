-- A running job belongs to one attempt at a time. `attempts` numbers the attempts and fences
-- their writes (an attempt records logs and its end only while the row still has its number);
-- `lease_until` is how long, by this database's clock, the attempt's worker vouches for it. A
-- delivery takes over a running job only once its lease has passed (its worker died, or lost
-- the database and stopped the job itself). Not indexed: each renewal is then a HOT update.
ALTER TABLE jobs ADD COLUMN lease_until timestamptz;
