"""Label encodings: decoding tables checked value by value against the SPEC rules."""
import numpy as np
import pytest

from oodseg.data import decode_label, encoding_from_mapping, parse_mapping
from oodseg.data.labels import LOSTANDFOUND, OOD_LABELS, STREETHAZARDS
from oodseg.errors import OodsegError


def test_lostandfound_table_every_value():
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = decode_label(raw, LOSTANDFOUND)
    for v in range(256):
        assert out.flat[v] == (0 if v == 1 else 1 if 2 <= v <= 200 else 255)


def test_streethazards_table_every_value():
    raw = np.arange(15, dtype=np.uint8).reshape(3, 5)
    out = decode_label(raw, STREETHAZARDS)
    assert out.tolist() == [[255, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]]


def test_decode_rejects_wide_values_and_rank():
    with pytest.raises(OodsegError, match="label value 300"):
        decode_label(np.array([[0, 300]], dtype=np.uint16), OOD_LABELS, "x.png")
    with pytest.raises(OodsegError, match="single-channel"):
        decode_label(np.zeros((2, 2, 3), np.uint8), OOD_LABELS, "x.png")
    out = decode_label(np.array([[0, 255]], dtype=np.uint16), OOD_LABELS)
    assert out.dtype == np.uint8 and out.tolist() == [[0, 255]]


def test_parse_mapping_and_valid_values_message():
    assert parse_mapping("0:0, 1-3:1,255:255") == {0: 0, 1: 1, 2: 1, 3: 1, 255: 255}
    enc = encoding_from_mapping("m", parse_mapping("0:0,1-3:1,255:255"))
    assert enc.valid_values() == "0-3, 255"
    with pytest.raises(OodsegError, match=r"valid: 0-3, 255"):
        decode_label(np.array([[4]], np.uint8), enc, "m.png")
    with pytest.raises(OodsegError, match="outside 0..255"):
        encoding_from_mapping("m", {0: 256})
    with pytest.raises(OodsegError, match="empty"):
        parse_mapping(" , ")
