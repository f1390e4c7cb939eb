"""Write tests/data/bad/: small, generated photo files that are broken or unusual in one way each.

Every file is drawn here (no real photos) and kept small; ``expected.yaml`` says, per file, ``ok``,
a substring of the ``ImageError`` that ``shoeclass.images.load_image`` must raise, or
``no shoe in this photo`` (loads, but is refused before the network as blank). Inputs that are not
files (a URL, a folder, a missing path) are listed there under ``inputs``; the generators of the
decode-cost bombs (:func:`scan_bomb`, :func:`tiled_tiff`, :func:`png_rows`) are reused at full size
by benchmarks/decode_budget.py.

Usage:
    python scripts/make_bad_corpus.py [--out tests/data/bad]
"""
from __future__ import annotations

import argparse
import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

NO_SHOE = "no shoe in this photo"  # expected outcomes that load but are refused before the network
ROOT = Path(__file__).resolve().parent.parent
SIZE = (96, 128)  # (w, h): a small portrait photo


def boot(size: tuple[int, int] = SIZE, mode: str = "RGB") -> Image.Image:
    """A boot drawn on white: red shaft at the top, dark sole at the bottom (so "upright" is testable)."""
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.rectangle([w * 0.3, 0, w * 0.6, h * 0.5], fill=(200, 30, 30))  # shaft, top half
    d.rectangle([w * 0.1, h * 0.5, w * 0.9, h * 0.85], fill=(120, 70, 30))  # foot
    d.rectangle([w * 0.1, h * 0.85, w * 0.9, h - 1], fill=(20, 20, 20))  # sole, bottom
    return img.convert(mode)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_raw(width: int, height: int, bit_depth: int, colour: int, rows: bytes | None) -> bytes:
    """A PNG written by hand: PIL cannot write 16-bit RGB, nor a header without its pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    idat = zlib.compress(rows, 9) if rows is not None else zlib.compress(b"\0" * 64)[:20]
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def png16_grey() -> bytes:
    """16-bit greyscale: left half 0x8000 (mid grey), right half 0xFFFF (white)."""
    w, h = SIZE
    row = np.concatenate([np.full(w // 2, 0x8000), np.full(w - w // 2, 0xFFFF)]).astype(">u2")
    return png_raw(w, h, 16, 0, b"".join(b"\0" + row.tobytes() for _ in range(h)))


def png16_rgb() -> bytes:
    """16-bit RGB of the boot drawing (each 8-bit value v stored as v * 257)."""
    arr = (np.asarray(boot()).astype(np.uint32) * 257).astype(">u2")
    return png_raw(arr.shape[1], arr.shape[0], 16, 2, b"".join(b"\0" + r.tobytes() for r in arr))


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose SOF0 header declares other dimensions (the pixels stay small)."""
    i = data.index(b"\xff\xc0")
    return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


def exif_rotated() -> bytes:
    """Stored sideways with EXIF Orientation 6: upright only once the orientation is applied."""
    stored = boot().transpose(Image.Transpose.ROTATE_90)  # what a phone held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=90, exif=exif.tobytes())


def corrupt_exif() -> bytes:
    """A good JPEG whose APP1 EXIF block is garbage."""
    data = encode(boot(), "JPEG", quality=90)
    app1 = b"Exif\0\0II*\0" + b"\xff\xfe\x00\x10" * 8
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def animated_gif() -> bytes:
    frames = [Image.new("RGB", SIZE, c) for c in ((220, 0, 0), (0, 200, 0), (0, 0, 220))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def animated_webp() -> bytes:
    """Three frames, the first the boot: the first frame is what is classified."""
    frames = [boot(), Image.new("RGB", SIZE, (0, 200, 0)), Image.new("RGB", SIZE, (0, 0, 220))]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)


def alpha_png() -> bytes:
    """A boot cut out on a transparent background (as shops export product photos)."""
    img = boot().convert("RGBA")
    arr = np.asarray(img).copy()
    arr[(arr[:, :, :3] == 255).all(2), 3] = 0
    arr[(arr[:, :, :3] == 255).all(2), :3] = 0  # transparent black: shows up if alpha is dropped
    return encode(Image.fromarray(arr), "PNG")


def large_jpeg() -> bytes:
    """33 MP, decoded at half scale by libjpeg; flat colour with a dark block (so it is not blank) and
    optimised Huffman codes cost about 2 bits per 8×8 block."""
    img = Image.new("RGB", (8192, 4096), (180, 150, 120))
    ImageDraw.Draw(img).rectangle([3072, 1024, 5120, 3072], fill=(40, 30, 20))
    return encode(img, "JPEG", quality=30, subsampling=2, optimize=True)


def large_png() -> bytes:
    """24 MP greyscale, mostly flat, with a dark block (so it is not blank)."""
    img = Image.new("L", (6000, 4000), 180)
    ImageDraw.Draw(img).rectangle([2000, 1000, 4000, 3000], fill=40)
    return encode(img, "PNG", optimize=True)


def jpeg_segments(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(marker, segment with its header, entropy-coded data after it) for each marker of a JPEG."""
    pos, out = 2, []
    while pos < len(data) and data[pos + 1] != 0xD9:
        marker = data[pos + 1]
        end = pos + 2 + struct.unpack_from(">H", data, pos + 2)[0]
        stop = end
        while marker == 0xDA:  # entropy-coded data runs to the next marker that is not 0xFF00 or RSTn
            stop = data.index(b"\xff", stop)
            if data[stop + 1] != 0 and not 0xD0 <= data[stop + 1] <= 0xD7:
                break
            stop += 2
        out.append((marker, data[pos:end], data[end:stop]))
        pos = stop
    return out


def scan_bomb(scans: int, width: int, height: int, subsampling: int = 2) -> bytes:
    """A progressive JPEG declaring width×height whose first (DC, all components) scan header is
    repeated ``scans`` times with no data: libjpeg walks the whole coefficient buffer for each."""
    small = encode(Image.new("RGB", (64, 64), (128, 128, 128)), "JPEG", quality=80, progressive=True,
                   subsampling=subsampling)
    segs = jpeg_segments(small)
    head = b"".join(seg for m, seg, _ in segs if m != 0xDA)
    i = head.index(b"\xff\xc2")
    head = head[:i + 5] + struct.pack(">HH", height, width) + head[i + 9:]
    dc = next(seg for m, seg, _ in segs if m == 0xDA)
    return b"\xff\xd8" + head + dc * scans + b"\xff\xd9"


def progressive_header_only(width: int, height: int) -> bytes:
    """A progressive JPEG header (tables and frame) with no scan at all: about 600 bytes."""
    return scan_bomb(0, width, height)


def tiled_tiff(width: int, height: int) -> bytes:
    """A TIFF of width×height one-pixel tiles all pointing at the same byte (libtiff walks each)."""
    n = width * height
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (277, 3, 1, 1), (322, 4, 1, 1), (323, 4, 1, 1), (324, 4, n, None), (325, 4, n, None)]
    ifd_at, data_at = 8, 8 + 2 + 12 * len(entries) + 4
    offsets_at, counts_at = data_at + 1, data_at + 1 + 4 * n
    out = bytearray(b"II*\0" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        value = offsets_at if tag == 324 else counts_at if tag == 325 else value
        out += struct.pack("<HHII", tag, kind, count, value) if kind == 4 else struct.pack("<HHIHH", tag, kind,
                                                                                             count, value, 0)
    out += struct.pack("<I", 0) + b"\x80"
    out += struct.pack("<I", data_at) * n + struct.pack("<I", 1) * n
    return bytes(out)


def png_rows(width: int, height: int, colour: int, filter_type: int) -> bytes:
    """A flat PNG whose every row uses ``filter_type`` (4, Paeth, is the slowest to undo)."""
    bands = {0: 1, 2: 3, 6: 4}[colour]
    row = bytes([filter_type]) + bytes(width * bands)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def flat(value: int) -> bytes:
    """A photo of one flat colour (value, value, value): nothing in it."""
    return encode(Image.new("RGB", SIZE, (value, value, value)), "JPEG", quality=90)


FILES = {
    # name: (bytes, expected)
    "truncated.jpg": (lambda: encode(boot((400, 300)), "JPEG", quality=95)[:3000], "the file is truncated"),
    "header_only.jpg": (lambda: encode(boot(), "JPEG")[:200], "the file is truncated"),
    "empty.jpg": (lambda: b"", "empty file"),
    "text.jpg": (lambda: b"This is not a photo, it is a note about a boot.\n", "a text file, not an image"),
    "webpage.jpg": (lambda: b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", "a web page (HTML)"),
    "random_bytes.jpg": (lambda: np.random.default_rng(0).bytes(2000), "not an image in a known format"),
    "drawing.svg": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="90" height="90">'
                            b'<rect width="90" height="90" fill="red"/></svg>\n', "an SVG drawing"),
    "iphone.heic": (lambda: b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64), "HEIC/HEIF"),
    "jpeg_named.heic": (lambda: encode(boot(), "JPEG", quality=90), "ok"),
    "postscript.eps": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 90 90\nshowpage\n",
                       "a PostScript/EPS file, which shoeclass does not read"),  # never handed to ghostscript
    "icon.ico": (lambda: encode(boot((64, 64)), "ICO"), "a ICO icon file, which shoeclass does not read"),
    "alpha.png": (alpha_png, "ok"),
    "grey_alpha.png": (lambda: encode(boot(mode="LA"), "PNG"), "ok"),
    "palette.png": (lambda: encode(boot().quantize(16), "PNG"), "ok"),
    "palette_transparent.gif": (lambda: encode(boot().quantize(16), "GIF", transparency=0),
                                "a GIF file, which shoeclass does not read"),
    "bilevel.png": (lambda: encode(boot(mode="1"), "PNG"), "ok"),
    "grey16.png": (png16_grey, "ok"),
    "rgb16.png": (png16_rgb, "ok"),
    "cmyk.jpg": (lambda: encode(boot(mode="CMYK"), "JPEG", quality=90), "ok"),
    "greyscale.jpg": (lambda: encode(boot(mode="L"), "JPEG", quality=90), "ok"),
    "exif_rotated.jpg": (exif_rotated, "ok"),
    "corrupt_exif.jpg": (corrupt_exif, "ok"),
    "animated.gif": (animated_gif, "a GIF file, which shoeclass does not read"),
    "animated.webp": (animated_webp, "ok"),
    "photo.webp": (lambda: encode(boot(), "WEBP", quality=80), "ok"),
    "photo.bmp": (lambda: encode(boot(), "BMP"), "a BMP file, which shoeclass does not read"),
    "photo.tiff": (lambda: encode(boot(), "TIFF", compression="tiff_deflate"), "a TIFF file"),
    "tile_bomb.tiff": (lambda: tiled_tiff(64, 64), "a TIFF file, which shoeclass does not read"),
    "photo.avif": (lambda: b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf" + bytes(64), "a AVIF file"),
    "scan_bomb_2000.jpg": (lambda: scan_bomb(2000, 1024, 1024), "a JPEG of more than 64 scans"),
    "scans_64.jpg": (lambda: scan_bomb(64, 96, 128), "no shoe in this photo"),  # at the limit: decodes (grey)
    "progressive_no_data.jpg": (lambda: progressive_header_only(8000, 8000), "no image data"),
    "progressive_huge.jpg": (lambda: scan_bomb(1, 8000, 8000, subsampling=0), "decode budget"),
    "png_over_budget.png": (lambda: png_raw(6000, 6000, 8, 6, None), "decode budget"),
    "strip_40x100000.png": (lambda: png_rows(40, 100000, 0, 0), "image too narrow"),
    "blank_grey.jpg": (lambda: flat(128), "no shoe in this photo"),
    "blank_black.png": (lambda: encode(Image.new("L", SIZE, 0), "PNG"), "no shoe in this photo"),
    "blank_white.webp": (lambda: encode(Image.new("RGB", SIZE, "white"), "WEBP", lossless=True),
                         "no shoe in this photo"),
    "path_as_text.jpg": (lambda: b"/home/user/photos/boot.jpg", "looks like a file path given as bytes"),
    "progressive.jpg": (lambda: encode(boot(), "JPEG", quality=90, progressive=True), "ok"),
    "tiny_8x8.png": (lambda: encode(boot((8, 8)), "PNG"), "image too small"),
    "small_32x32.png": (lambda: encode(boot((32, 32)), "PNG"), "ok"),
    "large_6000x4000.png": (large_png, "ok"),
    "large_8192x4096.jpg": (large_jpeg, "ok"),
    "bomb_png_900mp.png": (lambda: png_raw(30000, 30000, 1, 0, None), "decompression bomb"),
    "bomb_png_85mp.png": (lambda: png_raw(9000, 9500, 1, 0, None), "decompression bomb"),  # over ours only
    "bomb_jpeg_4gp.jpg": (lambda: jpeg_with_size(encode(boot(), "JPEG"), 65000, 65000), "decompression bomb"),
    "ботинок_фото.jpg": (lambda: encode(boot(), "JPEG", quality=90), "ok"),
    "папка/сапог 2.jpg": (lambda: encode(boot(), "JPEG", quality=90), "ok"),
}

INPUTS = {  # passed to load_image as they are; the paths are relative to the corpus folder
    "https://shop.example/img/boot.jpg": "shoeclass does not download; save the photo and pass the file",
    "HTTP://SHOP.EXAMPLE/BOOT.JPG": "shoeclass does not download; save the photo and pass the file",
    "file:///tmp/boot.jpg": "shoeclass does not download; save the photo and pass the file",
    "data:image/jpeg;base64,/9j/4AAQ": "shoeclass does not download; save the photo and pass the file",
    "no_such_photo.jpg": "no such file",
    "папка": "is a folder, not a photo",
}


def write(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    expected = {}
    for name, (make, outcome) in FILES.items():
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(make())
        expected[name] = outcome
    lines = ["# Generated by scripts/make_bad_corpus.py: per file `ok` (loads as an upright RGB photo)",
             "# or a substring of the ImageError load_image raises. `inputs` are passed as they are.",
             "files:"]
    lines += [f"  {_q(k)}: {_q(v)}" for k, v in expected.items()]
    lines += ["inputs:"] + [f"  {_q(k)}: {_q(v)}" for k, v in INPUTS.items()]
    (out / "expected.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "tests" / "data" / "bad"))
    out = Path(parser.parse_args().out)
    write(out)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{len(FILES)} files ({total / 1024:.0f} KiB) and expected.yaml written to {out}")


if __name__ == "__main__":
    main()
