-- Login sessions are tokens too, but nobody needs a warning that one is about to expire.
ALTER TABLE tokens ADD COLUMN session boolean NOT NULL DEFAULT false;
