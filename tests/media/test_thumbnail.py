"""Thumbnails: the recommended size classes, crop and scale, never upscaling, animation,
caching, parameter errors and content that cannot be thumbnailed."""
from __future__ import annotations

import io
import os

import gevent
import pytest
from PIL import Image

from store.media import MediaFiles
from tests.media.conftest import SERVER, files_under, image_bytes, make_env, upload
from web.media_io import CSP

TH = "/_matrix/client/v1/media/thumbnail"
LEGACY_TH = "/_matrix/media/v3/thumbnail"
TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


def thumb(env, headers, mid, w, h, method="scale", **extra):
    q = {"width": w, "height": h, "method": method, **extra}
    return env.client.get(f"{TH}/{SERVER}/{mid}", query_string=q, headers=headers)


def opened(r):
    assert r.status_code == 200, r.get_json()
    return Image.open(io.BytesIO(r.data))


@pytest.mark.parametrize("fmt", list(TYPES))
def test_scale_fits_inside_the_chosen_class_keeping_aspect(env, alice, fmt):
    mid = upload(env, alice, image_bytes(fmt, (1000, 500)), TYPES[fmt])
    assert opened(thumb(env, alice, mid, 320, 240)).size == (320, 160)
    assert opened(thumb(env, alice, mid, 300, 100)).size == (320, 160)   # class 320x240
    assert opened(thumb(env, alice, mid, 700, 500)).size == (800, 400)   # class 800x600


@pytest.mark.parametrize("fmt", list(TYPES))
def test_crop_gives_the_exact_class_size(env, alice, fmt):
    mid = upload(env, alice, image_bytes(fmt, (1000, 500)), TYPES[fmt])
    assert opened(thumb(env, alice, mid, 96, 96, "crop")).size == (96, 96)
    assert opened(thumb(env, alice, mid, 20, 30, "crop")).size == (32, 32)
    assert opened(thumb(env, alice, mid, 50, 50, "crop")).size == (96, 96)


def test_output_types_and_headers(env, alice):
    for fmt, out in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"),
                     ("GIF", "image/png")):
        mid = upload(env, alice, image_bytes(fmt), TYPES[fmt])
        r = thumb(env, alice, mid, 96, 96, "crop")
        assert r.headers["Content-Type"] == out
        ext = out.split("/")[1]
        assert r.headers["Content-Disposition"] == f'inline; filename="thumbnail.{ext}"'
        assert r.headers["Content-Security-Policy"] == CSP
        assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_small_original_is_served_as_is_never_upscaled(env, alice):
    data = image_bytes("PNG", (50, 40))
    mid = upload(env, alice, data, "image/png")
    assert thumb(env, alice, mid, 96, 96, "crop").data == data
    assert thumb(env, alice, mid, 800, 600).data == data
    # 400x300 asks for 600x400: class 640x480 would upscale, so the original comes back
    data = image_bytes("JPEG", (400, 300))
    mid = upload(env, alice, data, "image/jpeg")
    assert thumb(env, alice, mid, 600, 400).data == data
    # bigger than every class: the original, which is never smaller than asked
    big = image_bytes("PNG", (1200, 900))
    mid = upload(env, alice, big, "image/png")
    assert thumb(env, alice, mid, 1000, 1000).data == big


def test_crop_of_a_narrow_image_keeps_the_aspect_without_upscaling(env, alice):
    mid = upload(env, alice, image_bytes("PNG", (60, 300)), "image/png")
    assert opened(thumb(env, alice, mid, 96, 96, "crop")).size == (60, 60)


def test_animated_gif(env, alice):
    mid = upload(env, alice, image_bytes("GIF", (400, 400), frames=4), "image/gif")
    r = thumb(env, alice, mid, 96, 96, "crop", animated="true")
    img = opened(r)
    assert r.headers["Content-Type"] == "image/webp"
    assert img.size == (96, 96) and getattr(img, "n_frames", 1) == 4
    for extra in ({"animated": "false"}, {}):
        r = thumb(env, alice, mid, 96, 96, "crop", **extra)
        img = opened(r)
        assert r.headers["Content-Type"] == "image/png" and getattr(img, "n_frames", 1) == 1
    # small animated original asked for statically: a still of the first frame
    mid = upload(env, alice, image_bytes("GIF", (40, 40), frames=3), "image/gif")
    img = opened(thumb(env, alice, mid, 96, 96, "crop"))
    assert getattr(img, "n_frames", 1) == 1 and img.size == (40, 40)


def test_animated_webp(env, alice):
    mid = upload(env, alice, image_bytes("WEBP", (500, 500), frames=3), "image/webp")
    img = opened(thumb(env, alice, mid, 320, 240, animated="true"))
    assert img.size == (240, 240) and img.n_frames == 3


def test_jpeg_exif_orientation_is_applied(env, alice):
    img = Image.new("RGB", (1000, 500), "red")
    exif = img.getexif()
    exif[0x0112] = 6  # rotated 90°: displayed as 500x1000
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    mid = upload(env, alice, buf.getvalue(), "image/jpeg")
    assert opened(thumb(env, alice, mid, 320, 240)).size == (120, 240)


def test_thumbnails_are_cached_after_first_generation(env, alice):
    mid = upload(env, alice, image_bytes("PNG", (1000, 800)), "image/png")
    first = thumb(env, alice, mid, 96, 96, "crop").data
    thumbs = [p for p in files_under(env.store_path) if "local_thumbnails" in p]
    assert len(thumbs) == 1
    mtime = os.stat(thumbs[0]).st_mtime_ns
    assert thumb(env, alice, mid, 90, 90, "crop").data == first  # same class 96x96
    assert os.stat(thumbs[0]).st_mtime_ns == mtime
    thumb(env, alice, mid, 320, 240)
    assert len([p for p in files_under(env.store_path) if "local_thumbnails" in p]) == 2


def test_concurrent_requests_share_one_render(env, alice):
    mid = upload(env, alice, image_bytes("JPEG", (2000, 1500)), "image/jpeg")
    jobs = [gevent.spawn(thumb, env, alice, mid, 640, 480) for _ in range(8)]
    gevent.joinall(jobs)
    bodies = {j.value.data for j in jobs}
    assert all(j.value.status_code == 200 for j in jobs) and len(bodies) == 1
    assert len([p for p in files_under(env.store_path) if "local_thumbnails" in p]) == 1
    assert not os.listdir(MediaFiles(env.store_path).tmp_dir)


def test_legacy_thumbnail_endpoint_is_unauthenticated(env, alice):
    mid = upload(env, alice, image_bytes("PNG"), "image/png")
    r = env.client.get(f"{LEGACY_TH}/{SERVER}/{mid}?width=32&height=32&method=crop")
    assert opened(r).size == (32, 32)
    assert env.client.get(f"{TH}/{SERVER}/{mid}?width=32&height=32").status_code == 401


@pytest.mark.parametrize("query,errcode", [
    ({"height": 32}, "M_MISSING_PARAM"),
    ({"width": 32}, "M_MISSING_PARAM"),
    ({"width": "abc", "height": 32}, "M_INVALID_PARAM"),
    ({"width": 0, "height": 32}, "M_INVALID_PARAM"),
    ({"width": -5, "height": 32}, "M_INVALID_PARAM"),
    ({"width": 32, "height": 32, "method": "stretch"}, "M_INVALID_PARAM"),
    ({"width": 32, "height": 32, "animated": "maybe"}, "M_INVALID_PARAM"),
])
def test_bad_parameters_are_400(env, alice, query, errcode):
    mid = upload(env, alice, image_bytes("PNG"), "image/png")
    r = env.client.get(f"{TH}/{SERVER}/{mid}", query_string=query, headers=alice)
    assert r.status_code == 400 and r.get_json()["errcode"] == errcode


def test_non_images_cannot_be_thumbnailed(env, alice):
    for data, ctype in ((b"hello", "text/plain"), (b"not really a png", "image/png"),
                        (image_bytes("BMP", (100, 50)), "image/bmp"),
                        (image_bytes("BMP", (100, 50)), "image/png")):
        mid = upload(env, alice, data, ctype)
        r = thumb(env, alice, mid, 32, 32)
        assert r.status_code == 400 and r.get_json()["errcode"] == "M_UNKNOWN", ctype


def test_unknown_media_thumbnail_is_404(env, alice):
    r = thumb(env, alice, "nosuchmedia", 32, 32)
    assert r.status_code == 404 and r.get_json()["errcode"] == "M_NOT_FOUND"


@pytest.fixture
def tiny_pixels_env(tmp_path):
    yield from make_env(tmp_path, max_image_pixels=10_000)


def test_images_over_max_image_pixels_are_413(tiny_pixels_env):
    h = {"Authorization": f"Bearer {tiny_pixels_env.make_user('pix')}"}
    mid = upload(tiny_pixels_env, h, image_bytes("PNG", (200, 200)), "image/png")
    r = thumb(tiny_pixels_env, h, mid, 32, 32, "crop")
    assert r.status_code == 413 and r.get_json()["errcode"] == "M_TOO_LARGE"
