"""PNG character cards and .charx zips (guppyforge/cards/png.py): personas survive the trip byte
for byte, other tools can read what we write, and hostile files fail fast with one line."""

from __future__ import annotations

import base64
import json
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import bounded_work
from PIL import Image

from guppyforge.apps.cli import cli
from guppyforge.cards import export_card, import_card
from guppyforge.cards import png as card_png
from guppyforge.errors import GuppyError
from guppyforge.files import builtin_personas
from guppyforge.persona.schema import load_persona

CARDS = Path(__file__).parent / "fixtures" / "cards"
PERSONAS = [*builtin_personas(), CARDS / "persona.yaml"]


# --- tiny PNG builders: a picture made by Pillow, chunks written by hand -----------------------


def picture(path: Path, size=(8, 12), mode="RGB") -> Path:
    Image.new(mode, size, "teal").save(path)
    return path


def chunk(kind: bytes, data: bytes, length: int | None = None) -> bytes:
    size = len(data) if length is None else length
    return struct.pack(">I4s", size, kind) + data + struct.pack(">I", zlib.crc32(kind + data))


def ihdr(width: int, height: int) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def png(*chunks: bytes, width=1, height=1) -> bytes:
    """A PNG: header, the given chunks, a (tiny, not decodable) IDAT and IEND."""
    body = ihdr(width, height) + b"".join(chunks) + chunk(b"IDAT", zlib.compress(b"\0\0\0\0"))
    return card_png.PNG_SIGNATURE + body + chunk(b"IEND", b"")


def text(key: str, card: dict | bytes) -> bytes:
    payload = card if isinstance(card, bytes) else base64.b64encode(json.dumps(card).encode())
    return chunk(b"tEXt", key.encode() + b"\0" + payload)


def fixture(name: str) -> dict:
    return json.loads((CARDS / name).read_text(encoding="utf-8"))


def import_error(path: Path, tmp_path: Path) -> str:
    """The one-line message import_card gives for `path` (and that it wrote nothing)."""
    with bounded_work(100_000), pytest.raises(GuppyError) as info:  # measured <= ~4,000
        import_card(path, tmp_path / "out.yaml")
    assert not (tmp_path / "out.yaml").exists()
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PERSONAS, ids=lambda p: p.name)
def test_persona_survives_a_png_card_byte_for_byte(path: Path, tmp_path: Path) -> None:
    card = export_card(path, tmp_path / "card.png", png=picture(tmp_path / "face.png"))
    back = import_card(card, tmp_path / "back.yaml")
    assert back.read_bytes() == path.read_bytes()
    assert load_persona(back).raw == load_persona(path).raw


def test_png_card_holds_v2_and_v3_that_pillow_reads(tmp_path: Path) -> None:
    face = picture(tmp_path / "face.jpg", size=(20, 30))  # a JPEG in, a PNG card out
    card = export_card(CARDS / "persona.yaml", tmp_path / "card.png", png=face)
    with Image.open(card) as im:
        assert im.format == "PNG" and im.size == (20, 30)
        chunks = {k: json.loads(base64.b64decode(v)) for k, v in im.text.items()}
    assert set(chunks) == {"chara", "ccv3"}
    assert (chunks["chara"]["spec"], chunks["ccv3"]["spec"]) == ("chara_card_v2", "chara_card_v3")
    assert chunks["ccv3"]["data"]["group_only_greetings"] == []  # required by V3
    v2 = json.loads(export_card(CARDS / "persona.yaml", tmp_path / "c.json").read_text("utf-8"))
    assert chunks["chara"] == v2  # the same card as the JSON export


def test_ccv3_is_preferred_over_chara(tmp_path: Path) -> None:
    both = tmp_path / "both.png"
    both.write_bytes(
        png(text("chara", fixture("v2_card.json")), text("ccv3", fixture("v3_card.json")))
    )
    persona = load_persona(import_card(both, tmp_path / "p.yaml"))
    assert persona.display_name == "Professor Quill Featherstone"


@pytest.mark.parametrize("name", ["v1_card.json", "v2_card.json", "v3_card.json"])
def test_png_and_charx_import_like_the_json_card(name: str, tmp_path: Path) -> None:
    data = fixture(name)
    as_json = load_persona(import_card(CARDS / name, tmp_path / "json.yaml")).raw
    key = "ccv3" if data.get("spec") == "chara_card_v3" else "chara"
    (tmp_path / "c.png").write_bytes(png(text("tEXt-but-not-a-card", data), text(key, data)))
    assert load_persona(import_card(tmp_path / "c.png", tmp_path / "png.yaml")).raw == as_json
    with zipfile.ZipFile(tmp_path / "c.charx", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("card.json", json.dumps(data))
        z.writestr("assets/icon/images/main.png", b"not really a png")
    assert load_persona(import_card(tmp_path / "c.charx", tmp_path / "zip.yaml")).raw == as_json


def test_card_png_of_a_huge_picture_imports_without_decoding_it(tmp_path: Path) -> None:
    # 100,000 x 100,000 pixels: a decompression bomb for anything that decodes the picture.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png(text("chara", fixture("v2_card.json")), width=100_000, height=100_000))
    with bounded_work(300_000):  # measured ~26,000
        import_card(bomb, tmp_path / "p.yaml")


# --- hostile or broken files: one line naming the file -----------------------------------------


def _card_chunk_too_big() -> bytes:  # declares 50 MB but holds 5 bytes: never read or allocated
    return png(struct.pack(">I4s", 50_000_000, b"tEXt") + b"chara\0AAAA")


HOSTILE = {
    "not-a-png.png": (b'{"spec": "chara_card_v2"}', "not a PNG image"),
    "truncated.png": (png(text("chara", {"a": 1}))[:40], "truncated PNG"),
    "no-card.png": (png(chunk(b"tEXt", b"Comment\0hello")), "no card inside"),
    "bad-base64.png": (png(text("chara", b"!!not base64!!")), "not valid base64"),
    "huge-chunk.png": (_card_chunk_too_big(), "over the 32 MiB card limit"),
    "corrupt-length.png": (png(struct.pack(">I4s", 0xFFFFFFF0, b"zzzz")), "corrupt PNG"),
    "lying-idat.png": (png(struct.pack(">I4s", 0x7FFFFFFF, b"IDAT")), "truncated PNG"),
    "bad-crc.png": (png(text("chara", {"a": 1})[:-4] + b"\0\0\0\0"), "damaged (CRC)"),
    "base64-of-junk.png": (png(text("chara", base64.b64encode(b"\xff\xfe"))), "not valid JSON"),
    "not-a-zip.charx": (b"hello", "not a .charx (zip) file"),
    "damaged.charx": (b"PK\x03\x04" + b"\0" * 40, "damaged .charx"),
}


@pytest.mark.parametrize("name", HOSTILE, ids=str)
def test_hostile_card_files_fail_in_one_line(name: str, tmp_path: Path) -> None:
    content, message = HOSTILE[name]
    (tmp_path / name).write_bytes(content)
    assert message in import_error(tmp_path / name, tmp_path)


def test_too_many_chunks_stops(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(card_png, "MAX_CHUNKS", 1_000)
    (tmp_path / "many.png").write_bytes(png(*[chunk(b"zzZz", b"")] * 1_001))
    assert "over 1,000 PNG chunks" in import_error(tmp_path / "many.png", tmp_path)


def test_charx_zip_bomb_and_crowded_zip_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(card_png, "MAX_CARD_JSON", 10_000)
    with zipfile.ZipFile(tmp_path / "bomb.charx", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("card.json", b" " * 1_000_000)  # ~1 KB on disk, 1 MB unpacked
    assert "over the limit" in import_error(tmp_path / "bomb.charx", tmp_path)
    monkeypatch.setattr(card_png, "MAX_ZIP_ENTRIES", 5)
    with zipfile.ZipFile(tmp_path / "crowd.charx", "w") as z:
        for i in range(6):
            z.writestr(f"{i}.txt", b"")
    assert "over 5 files" in import_error(tmp_path / "crowd.charx", tmp_path)
    with zipfile.ZipFile(tmp_path / "empty.charx", "w") as z:
        z.writestr("other.json", b"{}")
    assert "without card.json" in import_error(tmp_path / "empty.charx", tmp_path)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"plain text"), "not an image Pillow can read"),
        (lambda p: p.write_bytes(png(width=5_000, height=5_000)), "over the 16,777,216 limit"),
        (lambda p: p.write_bytes(png(width=100_000, height=100_000)), "limit"),
        (lambda p: p.write_bytes(png(width=4, height=4)), "a damaged image"),  # IDAT too short
        (lambda p: None, "no such image"),
    ],
    ids=["text", "too-big", "bomb", "damaged", "missing"],
)
def test_bad_picture_for_export_fails_in_one_line(make, message, tmp_path: Path) -> None:
    make(tmp_path / "face.png")
    with pytest.raises(GuppyError) as info:
        export_card(CARDS / "persona.yaml", tmp_path / "card.png", png=tmp_path / "face.png")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "card.png").exists()


def test_cli_png_card_round_trip(tmp_path: Path) -> None:
    face = picture(tmp_path / "face.png")
    runner = CliRunner()
    args = ["export-card", str(CARDS / "persona.yaml"), "--png", str(face)]
    result = runner.invoke(cli, [*args, "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli, ["import-card", str(tmp_path / "c.png"), "--out", str(tmp_path / "p.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p.yaml").read_bytes() == (CARDS / "persona.yaml").read_bytes()
    (tmp_path / "x.png").write_text("{}")
    result = runner.invoke(cli, ["import-card", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'x.png'}: not a PNG image (wrong signature). Give the card file itself"
    ]
