-- Remote media cache (server-server-api "Content Repository"): content of other servers
-- fetched on a client's request, and the thumbnails generated locally from it.  The bytes
-- live under media_store_path/remote_content/<filesystem_id> (a random id of ours: no part
-- of a path ever comes from the remote server).
CREATE TABLE remote_media_cache (
    media_origin TEXT NOT NULL,           -- the server name of the mxc:// URI
    media_id TEXT NOT NULL,               -- [A-Za-z0-9_-]+ (checked before any fetch)
    filesystem_id TEXT NOT NULL UNIQUE,   -- ours; names the file on disk
    media_type TEXT NOT NULL,             -- the Content-Type the remote gave (cleaned)
    upload_name TEXT,                     -- from its Content-Disposition, when given
    media_length BIGINT NOT NULL,         -- bytes
    sha256 TEXT NOT NULL,                 -- hex digest of the content
    image_width INTEGER,                  -- set when the content decoded as an image
    image_height INTEGER,
    image_animated INTEGER,
    created_ts BIGINT NOT NULL,           -- ms; when it was fetched
    quarantined_by TEXT,                  -- admin user id; NULL = not quarantined
    legacy_allowed INTEGER NOT NULL DEFAULT 1, -- 0 = fetched after unauthenticated access froze
    PRIMARY KEY (media_origin, media_id)
);

CREATE TABLE remote_media_thumbnails (
    filesystem_id TEXT NOT NULL REFERENCES remote_media_cache(filesystem_id) ON DELETE CASCADE,
    box_width INTEGER NOT NULL,
    box_height INTEGER NOT NULL,
    method TEXT NOT NULL,
    animated INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    media_length BIGINT NOT NULL,
    PRIMARY KEY (filesystem_id, box_width, box_height, method, animated)
);
