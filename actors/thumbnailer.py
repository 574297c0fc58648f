"""Thumbnail planning and rendering with Pillow: pure functions, no database, no actors.

``probe`` and ``render`` are blocking CPU/file work and are run in gevent's thread pool by
the caller (Pillow releases the GIL while decoding and resampling).  ``plan`` is cheap and
decides, from the request and the stored image size, which size class to serve (spec:
content repository, "Thumbnails"):

* the recommended classes 32x32 crop, 96x96 crop, 320x240 scale, 640x480 scale and
  800x600 scale; the smallest one of the requested method that is >= the request wins;
* "scale" fits the image inside the box keeping its aspect; "crop" cuts the largest
  centred region with the box's aspect and shrinks it to the box;
* nothing is ever upscaled, and when the original is no larger than the request (or larger
  than every class) the original is served instead of a thumbnail.
"""
from __future__ import annotations

import os

from PIL import Image, ImageOps, ImageSequence

from store.media import ImageInfo, ThumbnailKey

CROP_SIZES = ((32, 32), (96, 96))
SCALE_SIZES = ((320, 240), (640, 480), (800, 600))
# Declared types we try to thumbnail, and the decoders allowed to open them (a smaller
# attack surface than every format Pillow knows).
THUMBNAILABLE_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp",
                       "image/apng"}
_FORMATS = ["PNG", "JPEG", "GIF", "WEBP"]
_MAX_ANIMATED_FRAMES = 300
_EXIF_ORIENTATION = 0x0112


class ThumbnailError(Exception):
    """The content cannot be thumbnailed (not a supported image, or undecodable)."""


def probe(path: str) -> ImageInfo | None:
    """Pixel size (after EXIF rotation) and animation of an image file; None if it is not
    an image Pillow may decode.  Reads headers only (and frame markers for GIF)."""
    try:
        with Image.open(path, formats=_FORMATS) as img:
            w, h = img.size
            if img.format == "JPEG" and img.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
                w, h = h, w
            animated = bool(getattr(img, "is_animated", False))
            return ImageInfo(w, h, animated)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def plan(image: ImageInfo, req_w: int, req_h: int, method: str,
         animated: bool) -> ThumbnailKey | None:
    """The size class to serve for a request, or None to serve the original content."""
    want_anim = animated and image.animated
    original_ok = not image.animated or want_anim  # never animate unless asked
    if image.width <= req_w and image.height <= req_h and original_ok:
        return None
    sizes = CROP_SIZES if method == "crop" else SCALE_SIZES
    fits = [s for s in sizes if s[0] >= req_w and s[1] >= req_h]
    if fits:
        bw, bh = min(fits, key=lambda s: s[0] * s[1])
        if method == "scale" and image.width <= bw and image.height <= bh and original_ok:
            return None
        return ThumbnailKey(bw, bh, method, want_anim)
    if original_ok:
        return None
    # bigger than every class and animated but a still was asked for: the first frame
    return ThumbnailKey(image.width, image.height, "scale", False)


def _target(src_w: int, src_h: int, key: ThumbnailKey) -> tuple[tuple[int, int, int, int],
                                                                 tuple[int, int]]:
    """The crop box on the source and the output size, never larger than the source."""
    bw, bh = key.box_width, key.box_height
    if key.method == "crop":
        aspect = bw / bh
        if src_w / src_h > aspect:
            cw, ch = max(1, round(src_h * aspect)), src_h
        else:
            cw, ch = src_w, max(1, round(src_w / aspect))
        left, top = (src_w - cw) // 2, (src_h - ch) // 2
        f = min(1.0, bw / cw, bh / ch)
        return (left, top, left + cw, top + ch), (max(1, round(cw * f)), max(1, round(ch * f)))
    f = min(1.0, bw / src_w, bh / src_h)
    return (0, 0, src_w, src_h), (max(1, round(src_w * f)), max(1, round(src_h * f)))


def _frame(img: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int],
           mode: str) -> Image.Image:
    frame = img.convert(mode)
    if box != (0, 0, frame.width, frame.height):
        frame = frame.crop(box)
    if frame.size != size:
        frame = frame.resize(size, Image.Resampling.LANCZOS)
    return frame


def render(src: str, dst: str, key: ThumbnailKey, max_pixels: int) -> tuple[int, int, str]:
    """Write the thumbnail of ``src`` for ``key`` to ``dst``; return (width, height, type).

    JPEG stays JPEG, animated output is WebP, anything else becomes PNG (alpha kept)."""
    try:
        with Image.open(src, formats=_FORMATS) as img:
            if img.width * img.height > max_pixels:
                raise ThumbnailError("image too large to thumbnail")
            fmt = img.format
            if key.animated and getattr(img, "n_frames", 1) > 1:
                return _render_animated(img, dst, key)
            if fmt == "JPEG":
                img.draft("RGB", (key.box_width, key.box_height))
                img = ImageOps.exif_transpose(img)
            else:
                img.seek(0)
            box, size = _target(img.width, img.height, key)
            if fmt == "JPEG":
                out = _frame(img, box, size, "RGB")
                out.save(dst, "JPEG", quality=80, optimize=True)
                return out.width, out.height, "image/jpeg"
            mode = "RGBA" if ("A" in img.mode or "transparency" in img.info
                              or img.mode == "P") else "RGB"
            out = _frame(img, box, size, mode)
            if fmt == "WEBP":
                out.save(dst, "WEBP", quality=80)
                return out.width, out.height, "image/webp"
            out.save(dst, "PNG", optimize=False)
            return out.width, out.height, "image/png"
    except ThumbnailError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ThumbnailError(f"cannot decode image: {e}") from e


def _render_animated(img: Image.Image, dst: str, key: ThumbnailKey) -> tuple[int, int, str]:
    box, size = _target(img.width, img.height, key)
    frames, durations = [], []
    for i, frame in enumerate(ImageSequence.Iterator(img)):
        if i >= _MAX_ANIMATED_FRAMES:
            break
        frames.append(_frame(frame, box, size, "RGBA"))
        durations.append(int(frame.info.get("duration", img.info.get("duration", 100)) or 100))
    frames[0].save(dst, "WEBP", save_all=True, append_images=frames[1:], duration=durations,
                   loop=int(img.info.get("loop", 0) or 0), quality=75)
    return size[0], size[1], "image/webp"


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
