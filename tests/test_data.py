from __future__ import annotations

import json
from pathlib import Path

import pytest

from treelora_core.data import MIXED_STREAM, DataError, load_trace, load_wordnet, parse_records

TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "trace-500"


def test_jsonl_and_array_and_answer_alias() -> None:
    jsonl = b'{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "answer": "d"}\n'
    arr = json.dumps([{"prompt": "a", "completion": "b"}, {"prompt": "c", "answer": "d"}])
    assert parse_records(jsonl) == parse_records(arr)
    assert [e.completion for e in parse_records(jsonl)] == ["b", "d"]


@pytest.mark.parametrize(
    ("data", "line", "needle"),
    [
        (b'{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n', 2, "invalid JSON"),
        (b'{"prompt": "a", "completion": "b"}\n{"completion": "b"}\n', 2, '"prompt"'),
        (b'{"prompt": "a"}\n', 1, '"completion"'),
        (b'{"prompt": "a", "completion": 3}\n', 1, "strings"),
        (b'{"prompt": " ", "completion": "x"}\n', 1, "empty"),
        (b'["x"]', 1, "object"),
        (b'{"prompt": "ok", "completion": "ok"}\n{"prompt": "\xff\xfe", "completion": "b"}', 2, "UTF-8"),
        (b'{"prompt": "' + b"x" * 20_001 + b'", "completion": "b"}', 1, "longer"),
    ],
)
def test_bad_records_name_the_line(data: bytes, line: int, needle: str) -> None:
    with pytest.raises(DataError) as err:
        parse_records(data)
    assert err.value.line == line
    assert needle in str(err.value)


@pytest.mark.parametrize("data", [b"", b"   \n\n", b"[]"])
def test_empty_files_are_rejected(data: bytes) -> None:
    with pytest.raises(DataError):
        parse_records(data)


def test_wordnet_stream_is_real_and_disjoint() -> None:
    tasks = load_wordnet(n_tasks=6, n_train=40, n_test=20)
    assert len(tasks) == 6
    for t in tasks:
        labels = {e.completion for e in t.train}
        assert len(labels) == 4
        assert all(e.prompt.startswith("Classify") for e in t.train)
        assert not {e.prompt for e in t.train} & {e.prompt for e in t.test}


@pytest.mark.skipif(not TRACE.exists(), reason="TRACE-500 is not beside the repository")
def test_trace_loader_keeps_scienceqa_letter() -> None:
    tasks = load_trace(TRACE, MIXED_STREAM, n_train=20, n_test=10)
    assert [t.name for t in tasks] == list(MIXED_STREAM)
    sqa = tasks[-1]
    assert all(len(e.completion) == 1 for e in sqa.train + sqa.test)
    mb = load_trace(TRACE, ("MeetingBank",), n_train=5, n_test=5)[0]
    assert mb.metric == "rouge_l" and len(mb.train) == 5


def test_lone_surrogate_escapes_are_refused_with_their_line() -> None:
    """`"\\ud800"` is valid JSON but no character: it used to pass the upload and fail the job."""
    ok = b'{"prompt": "a", "completion": "b"}\n'
    for data, line in [
        (ok + b'{"prompt": "x\\ud800", "completion": "b"}\n', 2),
        (ok + ok + b'{"prompt": "x", "completion": "\\udfff"}\n', 3),
        (b'[{"prompt": "a", "completion": "b"}, {"prompt": "\\udc00 x", "completion": "b"}]', 2),
    ]:
        with pytest.raises(DataError, match="surrogate") as err:
            parse_records(data)
        assert err.value.line == line
    assert parse_records(b'{"prompt": "\\ud83d\\ude00", "completion": "b"}')[0].prompt == "\U0001f600"  # a pair


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c"])
def test_line_separators_inside_strings_are_kept(sep: str) -> None:
    """Records end at "\\n" only: characters that `str.splitlines` also breaks at are legal inside
    a JSON string (raw, not escaped) and stay in the text; "\\r\\n" line ends work too."""
    rows = [{"prompt": f"one{sep}two", "completion": "x"}, {"prompt": "p", "completion": f"a{sep}b"}]
    if sep in "\x0b\x0c\x1c":  # control characters must be escaped in JSON: json.dumps does
        data = "\r\n".join(json.dumps(r) for r in rows).encode()
    else:
        data = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode()
        assert sep.encode() in data
    got = parse_records(data)
    assert [(e.prompt, e.completion) for e in got] == [(r["prompt"], r["completion"]) for r in rows]
