-- Media admin (Synapse's "Media Admin API"): when media was last downloaded or thumbnailed,
-- which local media is protected from quarantine, and the files of deleted media not yet
-- removed from disk.
--
-- last_access_ts (ms) is written in batches by store/media_access.py (at most once a minute
-- per item, and at shutdown); NULL = not accessed since upload / fetch (or since this
-- migration), in which case created_ts stands in for it when deleting by date.
ALTER TABLE local_media ADD COLUMN last_access_ts BIGINT;
ALTER TABLE remote_media_cache ADD COLUMN last_access_ts BIGINT;
-- 1 = never quarantined (POST /_synapse/admin/v1/media/protect/{mediaId})
ALTER TABLE local_media ADD COLUMN safe_from_quarantine INTEGER NOT NULL DEFAULT 0;

-- Deleting media removes its rows first and its files after (actors/media.py): the rows
-- and this record of the files go in one transaction, the record goes once the files are
-- gone, and a process that died in between finishes the removal when the media actor
-- starts again.  kind: 'local' (file_id = media_id) or 'remote' (file_id = filesystem_id).
CREATE TABLE media_file_removals (
    kind TEXT NOT NULL,
    file_id TEXT NOT NULL,
    PRIMARY KEY (kind, file_id)
);
