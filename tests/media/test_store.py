"""The media store's path jail and the thumbnail planner (pure)."""
from __future__ import annotations

import os

import pytest

from actors.thumbnailer import plan
from store.media import ImageInfo, MediaFiles, ThumbnailKey, new_media_id, valid_media_id


def test_generated_ids_are_valid_and_unique():
    ids = {new_media_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(valid_media_id(i) for i in ids)


@pytest.mark.parametrize("bad", ["", "..", "a/b", "a.b", "a\\b", "é", "a b", "x" * 256,
                                 "\x00", "%2e%2e"])
def test_paths_are_only_built_from_valid_ids(tmp_path, bad):
    files = MediaFiles(str(tmp_path))
    with pytest.raises(ValueError):
        files.content_path(bad)
    with pytest.raises(ValueError):
        files.thumbnail_dir(bad)


def test_paths_stay_under_the_root(tmp_path):
    files = MediaFiles(str(tmp_path))
    for mid in ("abcdefgh", "a", "ab_-", "-----"):
        p = files.content_path(mid)
        assert p.startswith(os.path.realpath(tmp_path) + os.sep)
        t = files.thumbnail_path(mid, ThumbnailKey(32, 32, "crop", False))
        assert t.startswith(files.thumbnail_dir(mid) + os.sep)


BIG = ImageInfo(2000, 1000, False)
ANIM = ImageInfo(2000, 1000, True)


@pytest.mark.parametrize("info,req,expected", [
    (BIG, (32, 32, "crop", False), ThumbnailKey(32, 32, "crop", False)),
    (BIG, (33, 20, "crop", False), ThumbnailKey(96, 96, "crop", False)),
    (BIG, (97, 97, "crop", False), None),          # bigger than every crop class
    (BIG, (100, 100, "scale", False), ThumbnailKey(320, 240, "scale", False)),
    (BIG, (321, 100, "scale", False), ThumbnailKey(640, 480, "scale", False)),
    (BIG, (800, 600, "scale", False), ThumbnailKey(800, 600, "scale", False)),
    (BIG, (801, 600, "scale", False), None),
    (BIG, (96, 96, "crop", True), ThumbnailKey(96, 96, "crop", False)),  # not animated
    (ANIM, (96, 96, "crop", True), ThumbnailKey(96, 96, "crop", True)),
    (ANIM, (3000, 3000, "scale", False), ThumbnailKey(2000, 1000, "scale", False)),
    (ANIM, (3000, 3000, "scale", True), None),
    (ImageInfo(300, 200, False), (310, 220, "scale", False), None),   # original is smaller
    # scale fits inside the class: 330x200 -> 320x194, the same as fitting the request
    (ImageInfo(330, 200, False), (320, 200, "scale", False),
     ThumbnailKey(320, 240, "scale", False)),
])
def test_plan_chooses_the_smallest_class_at_least_the_request(info, req, expected):
    assert plan(info, *req) == expected
