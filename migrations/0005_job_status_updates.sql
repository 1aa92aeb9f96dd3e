-- Every job's status changes twice (running, then completed). No query looks jobs up by status
-- alone, and an index on it made each of those changes rewrite every index of the table; without
-- it, and with free room in each page, PostgreSQL updates the row in place (a HOT update).
DROP INDEX IF EXISTS jobs_unfinished;
ALTER TABLE jobs SET (fillfactor = 70);
