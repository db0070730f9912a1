"""``chargedesk nlu parse``: lines in, one JSON parse result per line out."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from assistant.nlu.engine import NluEngine
from chargedesk.cli import app


def test_nlu_parse_reads_lines_and_prints_json_lines(nlu: NluEngine) -> None:
    result = CliRunner().invoke(
        app, ["nlu", "parse", "--today", "2025-11-19"],
        input="kabeln sitter fast på uttag 2\nwhat did I pay last October\n\nhej\n")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["intent"]["name"] for r in lines] == ["cable_stuck", "billing_history", "greet"]
    assert [r["language"] for r in lines] == ["sv", "en", "sv"]
    assert lines[0]["entities"][0]["value"] == 2
    assert lines[1]["entities"] == [{
        "entity": "date", "start": 15, "end": 27, "extractor": "DateExtractor",
        "value": {"from": "2025-10-01", "to": "2025-10-31"}}]
    assert all(len(r["intent_ranking"]) == 10 for r in lines)
