"""lightvm.jsonline against json itself: the same text out, the same values in, ValueError
for what json refuses."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from lightvm import jsonline

VALUES = [
    None,
    True,
    0,
    -7,
    2**70,
    1.5,
    -0.0,
    1e-300,
    "",
    "plain",
    'quote " backslash \\ controls \n\t\x00\x1f',
    "unicode é ☃ 𝄞",
    [],
    {},
    [1, [2, [3, {"a": None}]]],
    {"v": 1, "id": 3, "op": "create", "args": {"config": "/x/noop.toml", "publish": ["127.0.0.1:1:13"], "pool": False}},
    {"ok": True, "result": [{"name": "m1", "boot_ms": {"ready": 0.612, "guest_entry": None}, "pid": 123}]},
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_the_same_text_and_values_as_json(value: object) -> None:
    for separators in ((", ", ": "), (",", ":")):
        text = jsonline.dumps(value, separators=separators)
        assert text == json.dumps(value, separators=separators)
        assert jsonline.loads(text) == json.loads(text)
        assert jsonline.loads(text.encode()) == value
    assert jsonline.loads(f" \n\t{json.dumps(value)}\r\n ") == value


def test_non_finite_floats_as_json_writes_them() -> None:
    text = jsonline.dumps([math.inf, -math.inf, math.nan])
    assert text == json.dumps([math.inf, -math.inf, math.nan])
    inf, ninf, nan = jsonline.loads(text)
    assert inf == math.inf and ninf == -math.inf and math.isnan(nan)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "{", "[1,]", '{"a":1}x', "1 2", "nul", '"\x01"', '{"a" 1}', b"\xff\xfe", "'single'"],
)
def test_what_json_refuses_is_a_value_error(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        jsonline.loads(text)


def test_unserializable_and_circular_are_refused() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsonline.dumps({"x": object()})
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match=r"[Cc]ircular"):
        jsonline.dumps(loop)


def test_importing_it_imports_no_json() -> None:
    """The point of the module: the thin path stays clear of json (and of re through it)."""
    code = "import sys, lightvm.jsonline as j; j.loads(j.dumps({'a': [1]})); print('json' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
