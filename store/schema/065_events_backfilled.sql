-- Federation II: events fetched as older history (/backfill) are stored with a new stream
-- position like every other event; this flag keeps them out of what /sync serves as new
-- (they are placed by depth in /messages, see web/pagination.py).
ALTER TABLE events ADD COLUMN backfilled INTEGER NOT NULL DEFAULT 0;
