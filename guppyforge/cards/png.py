"""Character Cards inside images and zips: PNG cards (V2 `chara`, V3 `ccv3`) and V3 `.charx`.

A PNG card is an ordinary picture of the character with the card's JSON, base64-encoded, in a
`tEXt` chunk: `chara` for V2, `ccv3` for V3 (a reader prefers `ccv3` when both are there). A
`.charx` is a zip with `card.json` at its root, beside the images it names.

Cards come from strangers, so reading never trusts a size it was given: PNG chunks are walked
by hand (the picture is skipped, never decoded), the card chunk and the JSON inside a zip are
read up to a fixed limit, and the zip's entry count is checked before Python parses its index.
Writing needs Pillow (`pip install "guppyforge[cards]"`), which re-encodes the given picture.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

from guppyforge.errors import GuppyError
from guppyforge.files import FileKind, json_object

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
MAX_CARD_JSON = 32 << 20  # the same bound as a JSON card file (cards.MAX_CARD_BYTES)
MAX_CHUNKS = 100_000  # an image of 8 KiB IDAT chunks reaches 800 MB first
MAX_ZIP_ENTRIES = 10_000  # a card with its assets holds dozens
MAX_IMAGE_PIXELS = 4096 * 4096  # ~64 MiB decoded as RGBA: far above any avatar
CARD_KEYS = ("ccv3", "chara")  # in order of preference


def read_packed_card(path: Path) -> bytes | None:
    """The card JSON (bytes) of a PNG card or a .charx, or None for any other file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if head == PNG_SIGNATURE:
            return _png_card_json(path, f)
    if head.startswith(ZIP_SIGNATURE):
        return _charx_card_json(path)
    suffix = path.suffix.lower()
    if suffix in (".png", ".charx"):  # named as one, but the bytes say otherwise
        kind = "a PNG image" if suffix == ".png" else "a .charx (zip) file"
        raise GuppyError(f"{path}: not {kind} (wrong signature). Give the card file itself")
    return None


def _png_card_json(path: Path, f) -> bytes:
    """Walk the chunk list after the signature; decode the preferred card chunk."""
    found: dict[str, bytes] = {}
    for _ in range(MAX_CHUNKS):
        header = f.read(8)
        if len(header) < 8:
            raise GuppyError(f"{path}: a truncated PNG (no IEND chunk). Download the card again")
        length, kind = struct.unpack(">I4s", header)
        if length > 0x7FFFFFFF:  # the PNG spec's own bound
            raise GuppyError(f"{path}: a corrupt PNG (chunk of {length} bytes). Download it again")
        if kind == b"IEND":
            break
        if kind != b"tEXt":
            f.seek(length + 4, io.SEEK_CUR)  # the picture and its CRC: skipped, never read
            continue
        key = f.read(min(length, 80)).split(b"\0", 1)[0].decode("latin-1")
        if key not in CARD_KEYS:
            f.seek(length - min(length, 80) + 4, io.SEEK_CUR)
            continue
        if length > MAX_CARD_JSON * 4 // 3 + 100:  # base64 makes 4 bytes of every 3
            raise GuppyError(
                f"{path}: its '{key}' chunk is {length:,} bytes, over the "
                f"{MAX_CARD_JSON >> 20} MiB card limit. Remove embedded images from the card"
            )
        f.seek(-min(length, 80), io.SEEK_CUR)
        data, crc = f.read(length), f.read(4)
        if len(crc) < 4 or zlib.crc32(header[4:] + data) != struct.unpack(">I", crc)[0]:
            raise GuppyError(f"{path}: the '{key}' chunk is damaged (CRC). Download it again")
        found.setdefault(key, data.partition(b"\0")[2])
    else:
        raise GuppyError(f"{path}: over {MAX_CHUNKS:,} PNG chunks. Not a card: give another file")
    key = next((k for k in CARD_KEYS if k in found), None)
    if key is None:
        raise GuppyError(
            f"{path}: a PNG with no card inside (no 'chara' or 'ccv3' text chunk). "
            "Export the character as a card (PNG or JSON) from your chat app"
        )
    try:
        return base64.b64decode(b"".join(found[key].split()), validate=True)
    except (binascii.Error, ValueError):
        raise GuppyError(
            f"{path}: its '{key}' chunk is not valid base64. Export it again"
        ) from None


def _zip_entry_count(path: Path) -> int:
    """Entries the zip's end record declares, read before zipfile loads the whole index."""
    with open(path, "rb") as f:
        f.seek(0, io.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - (22 + 0xFFFF)))  # the end record, then a comment of <= 64 KiB
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise GuppyError(f"{path}: a damaged .charx (no zip index). Download the card again")
    count = struct.unpack("<H", tail[at + 10 : at + 12])[0]
    return MAX_ZIP_ENTRIES + 1 if count == 0xFFFF else count  # 0xFFFF: a zip64's real count


def _charx_card_json(path: Path) -> bytes:
    """card.json from the root of a .charx zip, read up to MAX_CARD_JSON bytes."""
    if _zip_entry_count(path) > MAX_ZIP_ENTRIES:
        raise GuppyError(f"{path}: over {MAX_ZIP_ENTRIES:,} files in the .charx. Not a card")
    try:
        with zipfile.ZipFile(path) as z:
            try:
                info = z.getinfo("card.json")
            except KeyError:
                raise GuppyError(
                    f"{path}: a zip without card.json at its root. Not a .charx card"
                ) from None
            if info.file_size > MAX_CARD_JSON:
                raise GuppyError(f"{path}: card.json is {info.file_size:,} bytes, over the limit")
            with z.open(info) as member:
                # The declared size may lie (a zip bomb): never decompress past the limit.
                data = member.read(MAX_CARD_JSON + 1)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError) as exc:
        raise GuppyError(f"{path}: a damaged .charx ({exc}). Download the card again") from None
    if len(data) > MAX_CARD_JSON:
        raise GuppyError(f"{path}: card.json is over {MAX_CARD_JSON >> 20} MiB. Not a card")
    return data


def v3_card(card: dict[str, Any]) -> dict[str, Any]:
    """The V3 form of a V2 card: the same data, V3's envelope and its one required new field."""
    data = {**card["data"]}
    data.setdefault("group_only_greetings", [])
    return {**card, "spec": "chara_card_v3", "spec_version": "3.0", "data": data}


def _b64(card: dict[str, Any]) -> str:
    text = json.dumps(card, ensure_ascii=False, allow_nan=False)
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def write_png_card(card: dict[str, Any], image: Path, out: Path) -> None:
    """Write `image` as a PNG at `out` with the card in a `chara` (V2) and a `ccv3` chunk."""
    try:
        from PIL import Image, PngImagePlugin, UnidentifiedImageError
    except ImportError:
        raise GuppyError('--png needs Pillow: pip install "guppyforge[cards]"') from None
    try:
        with Image.open(image) as im:  # reads the header only: the size is known before pixels
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise GuppyError(
                    f"{image}: {im.width}x{im.height} pixels, over the {MAX_IMAGE_PIXELS:,} "
                    "limit. Use a smaller picture (cards show ~400x600)"
                )
            im.load()
            # PNG holds these modes as they are; anything else (CMYK JPEGs...) becomes RGBA.
            picture = im if im.mode in ("1", "L", "LA", "P", "RGB", "RGBA") else im.convert("RGBA")
            info = PngImagePlugin.PngInfo()
            info.add_text("chara", _b64(card))
            info.add_text("ccv3", _b64(v3_card(card)))
            tmp = out.with_name(f".{out.name}.tmp")
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                picture.save(tmp, format="PNG", pnginfo=info)
                tmp.replace(out)
            finally:
                tmp.unlink(missing_ok=True)
    except FileNotFoundError:
        raise GuppyError(f"{image}: no such image. Check the --png path") from None
    except Image.DecompressionBombError:  # Pillow's own, far larger limit, hit while opening
        raise GuppyError(
            f"{image}: over the {MAX_IMAGE_PIXELS:,} pixel limit. Use a smaller picture"
        ) from None
    except (UnidentifiedImageError, SyntaxError, ValueError) as exc:
        why = type(exc).__name__
        raise GuppyError(
            f"{image}: not an image Pillow can read ({why}). Give a PNG or JPEG"
        ) from None
    except OSError as exc:  # truncated or damaged pixel data
        raise GuppyError(f"{image}: a damaged image ({exc}). Give another picture") from None


def _is_card(path: Path) -> bool:
    try:
        raw = read_packed_card(path)  # a PNG card or a .charx; None for anything else
        data = json.loads(raw).get("data") if raw else json_object(path).get("data")
    except (GuppyError, OSError, ValueError, RecursionError, AttributeError):
        return False
    ext = data.get("extensions") if isinstance(data, dict) else None
    return isinstance(ext, dict) and isinstance(ext.get("guppyforge"), dict)


# A card as `--force` may replace it: one guppyforge exported.
CARD_FILE = FileKind("a card guppyforge exported (data.extensions.guppyforge)", _is_card)
