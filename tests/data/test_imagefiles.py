"""Image files of every PNG colour type and bit depth read as the uint8 RGB picture they hold."""
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oodseg.data import open_dataset
from oodseg.data.imagefiles import read_image
from oodseg.errors import OodsegError

#: 16-bit samples and their 8-bit reading by hand: the high byte (v >> 8), as Pillow reads 16-bit RGB
SAMPLES_16 = np.array([[0, 255, 256, 65535], [32768, 4095, 65280, 1]], dtype=np.uint16)
EXPECTED_8 = np.array([[0, 0, 1, 255], [128, 15, 255, 0]], dtype=np.uint8)


def _write_png(path: Path, samples: np.ndarray, colour_type: int, bit_depth: int, width: int | None = None) -> Path:
    """A PNG written byte by byte (no Pillow): ``samples`` (H, W[, C]) stored big-endian, filter 0;
    ``width`` in pixels when below 8 bits several samples share one byte of ``samples``."""
    height, width = samples.shape[0], width or samples.shape[1]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = b"".join(b"\x00" + samples[y].astype(dtype).tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("colour_type, channels", [(0, None), (4, 2), (2, 3), (6, 4)],
                         ids=["gray16", "gray-alpha16", "rgb16", "rgba16"])
def test_16_bit_png_reads_its_high_byte_in_every_colour_type(tmp_path, colour_type, channels):
    samples = SAMPLES_16 if channels is None else np.stack([SAMPLES_16] * channels, axis=-1)
    if channels in (2, 4):
        samples[..., -1] = 65535 - samples[..., -1]  # alpha differs from the picture and is dropped
    image = read_image(_write_png(tmp_path / "x.png", samples, colour_type, 16))
    assert image.dtype == np.uint8 and image.shape == (2, 4, 3)
    np.testing.assert_array_equal(image, np.repeat(EXPECTED_8[..., None], 3, axis=2))


def test_16_bit_gray_written_by_pillow_and_read_through_a_dataset(tmp_path):
    Image.fromarray(SAMPLES_16).save(tmp_path / "a.png")  # Pillow writes mode I;16 as 16-bit gray
    assert Image.open(tmp_path / "a.png").mode == "I;16"
    np.testing.assert_array_equal(open_dataset("images", tmp_path)["a"].image[..., 1], EXPECTED_8)


def test_low_bit_depths_and_8_bit_modes_keep_their_values(tmp_path):
    gray4 = np.array([[0x01, 0x8F]], dtype=np.uint8)  # 4-bit samples 0, 1, 8, 15 packed two per byte
    np.testing.assert_array_equal(read_image(_write_png(tmp_path / "g4.png", gray4, 0, 4, width=4))[..., 0],
                                  [[0, 17, 136, 255]])  # v · 255 / 15
    gray8 = np.array([[0, 7, 200, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(read_image(_write_png(tmp_path / "g8.png", gray8, 0, 8)),
                                  np.repeat(gray8[..., None], 3, axis=2))
    palette = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    palette.putpalette([10, 20, 30, 200, 100, 50])
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), [[[10, 20, 30], [200, 100, 50]]])


def test_images_without_a_brightness_range_are_refused_in_one_line(tmp_path):
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32), "I").save(tmp_path / "i32.tif")
    Image.fromarray(np.array([[0.0, 0.5]], dtype=np.float32), "F").save(tmp_path / "f.tif")
    with pytest.raises(OodsegError, match=r"i32.tif: 32-bit integer image \(mode I\)") as error:
        read_image(tmp_path / "i32.tif")
    assert "\n" not in str(error.value)
    with pytest.raises(OodsegError, match=r"f.tif: floating-point image \(mode F\)"):
        read_image(tmp_path / "f.tif")
