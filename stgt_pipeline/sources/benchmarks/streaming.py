"""Constant-memory reading for web-scale corpora (WebVid-10M is 10.7M rows): a JSON-array reader that yields one
record at a time. (The matching writer is stgt_pipeline.io.manifest.ManifestWriter.)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from stgt_pipeline.sources.benchmarks.common import fail

CHUNK_CHARS = 1 << 20
MAX_RECORD_CHARS = 64 << 20  # a record this long is a syntax error, not a record split across chunks


def iter_json_array(path: Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) for each object of a top-level JSON array, reading `chunk_chars` at a time.

    Only objects are accepted as items, so a successful decode always ended on its closing brace and cannot be a
    prefix cut by the chunk boundary (a bare number could be).
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as fh:
        buf, pos, lines_before, eof = "", 0, 0, False

        def fill() -> None:
            nonlocal buf, pos, lines_before, eof
            lines_before += buf.count("\n", 0, pos)
            more = fh.read(chunk_chars)
            eof = not more
            buf, pos = buf[pos:] + more, 0

        def skip_ws() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or eof:
                    return buf[pos] if pos < len(buf) else ""
                fill()

        def line() -> int:
            return lines_before + buf.count("\n", 0, pos) + 1

        if skip_ws() != "[":
            raise fail(path, line(), "expected a JSON array of objects")
        pos += 1
        if skip_ws() == "]":
            return
        index = 0
        while True:
            if skip_ws() != "{":
                raise fail(path, line(), f"record {index}: expected an object"
                           + (" (file truncated?)" if eof and pos >= len(buf) else ""))
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    if eof or len(buf) - pos > MAX_RECORD_CHARS:
                        raise fail(path, line(), f"record {index}: invalid JSON ({exc.msg}); truncated?") from None
                    fill()
            start_line = line()
            pos = end
            yield start_line, obj
            index += 1
            sep = skip_ws()
            if sep == "]":
                return
            if sep != ",":
                raise fail(path, line(), f"after record {index - 1}: expected ',' or ']'"
                           + (", found the end of the file (truncated?)" if not sep else f", found {sep!r}"))
            pos += 1
