-- URL previews (client-server-api "Content repository", GET /media/preview_url): each
-- answer built for a URL, kept so a client asking again (or for the preview as it was at
-- an earlier ``ts``) is answered without fetching the page again, also after a restart.
-- ``url_hash`` (sha256 hex of the URL) is what is indexed: a URL may be longer than a
-- PostgreSQL index entry.  ``media_id`` is the local media holding the preview's image.
-- Rows expired for more than a day are pruned by store/url_previews.py.
CREATE TABLE url_previews (
    url_hash TEXT NOT NULL,
    url TEXT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL,
    og_json TEXT NOT NULL,
    media_id TEXT
);
CREATE INDEX url_previews_by_url ON url_previews (url_hash, fetched_ts);
CREATE INDEX url_previews_expiry ON url_previews (expires_ts);
