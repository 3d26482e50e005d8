"""JSON for the ``lightvm`` command's thin path, on the C accelerator alone.

``import json`` costs ~1.4 ms of a ~22 ms Python start on these hosts (``json.decoder``,
``json.scanner``, ``json.encoder``; and ``re`` with them where nothing loaded it yet):
~7 % of a ``lightvm create`` through lightvmd, whose bar is what ``python3 -c pass``
costs (docs/cli-startup.md). The encoder and the scanner ``json`` itself runs are C
(``_json``); :func:`dumps` and :func:`loads` drive them directly and give what
``json.dumps`` (no indent) and ``json.loads`` give: the same text, the same values, a
``ValueError`` for what is not one JSON document. Where ``_json`` is missing (not
CPython), they are ``json``'s own.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None  # type: ignore[assignment]

_WHITESPACE = " \t\n\r"  # JSON's insignificant whitespace (RFC 8259)
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


def _not_serializable(o: object) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


class _ScanContext:
    """What ``_json.make_scanner`` reads off a ``json.JSONDecoder``, with its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan = _json.make_scanner(_ScanContext()) if _json is not None else None  # type: ignore[arg-type]  # duck-typed


def dumps(obj: Any, separators: tuple[str, str] = (", ", ": ")) -> str:
    """``json.dumps(obj, separators=separators)``: ASCII, circular references refused."""
    if _json is None:  # pragma: no cover
        import json

        return json.dumps(obj, separators=separators)
    item_sep, key_sep = separators
    encode = _json.make_encoder(
        {}, _not_serializable, _json.encode_basestring_ascii, None, key_sep, item_sep, False, False, True
    )
    return "".join(encode(obj, 0))


def loads(text: str | bytes | bytearray) -> Any:
    """``json.loads(text)`` for UTF-8 text.

    :raise ValueError: not one JSON document (``json.JSONDecodeError`` from the scanner,
        ``UnicodeDecodeError`` for bytes that are not UTF-8).
    """
    if isinstance(text, (bytes, bytearray)):
        text = text.decode("utf-8")
    if _scan is None:  # pragma: no cover
        import json

        return json.loads(text)
    doc = text.strip(_WHITESPACE)
    try:
        value, end = _scan(doc, 0)
    except StopIteration as stop:
        raise ValueError(f"Expecting value: char {stop.value}") from None
    if end != len(doc):
        raise ValueError(f"Extra data: char {end}")
    return value


__all__ = ["dumps", "loads"]
