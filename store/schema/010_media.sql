-- Media repository: locally uploaded content and the thumbnails generated from it.
-- The bytes live on disk under media_store_path; these rows are the index and metadata.

CREATE TABLE local_media (
    media_id TEXT PRIMARY KEY,            -- [A-Za-z0-9_-]+, allocated by the media actor
    user_id TEXT NOT NULL,                -- the uploader (or creator of an async upload)
    created_ts BIGINT NOT NULL,           -- ms; when the id was allocated
    uploaded_ts BIGINT,                   -- ms; NULL = created with /create, not yet uploaded
    unused_expires_ts BIGINT,             -- ms; a pending id expires at this time
    media_type TEXT,                      -- the Content-Type given at upload
    upload_name TEXT,                     -- the filename given at upload
    media_length BIGINT,                  -- bytes
    sha256 TEXT,                          -- hex digest of the content
    image_width INTEGER,                  -- set when the content decoded as an image
    image_height INTEGER,
    image_animated INTEGER,               -- 1 = more than one frame
    quarantined_by TEXT,                  -- admin user id; NULL = not quarantined
    legacy_allowed INTEGER NOT NULL DEFAULT 1  -- 0 = uploaded after unauthenticated access froze
);
CREATE INDEX local_media_user_uploaded ON local_media (user_id, uploaded_ts);
CREATE INDEX local_media_unused_expires ON local_media (unused_expires_ts);

CREATE TABLE local_media_thumbnails (
    media_id TEXT NOT NULL REFERENCES local_media(media_id) ON DELETE CASCADE,
    box_width INTEGER NOT NULL,           -- the size class that was asked for
    box_height INTEGER NOT NULL,
    method TEXT NOT NULL,                 -- 'crop' or 'scale'
    animated INTEGER NOT NULL,            -- 1 = may be animated
    width INTEGER NOT NULL,               -- what was produced
    height INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    media_length BIGINT NOT NULL,
    PRIMARY KEY (media_id, box_width, box_height, method, animated)
);
