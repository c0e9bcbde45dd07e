"""Which answers can be judged as one plain text, and what a record keeps of an answer."""

from __future__ import annotations

from gateway.shadow.records import answer_side, plain_text
from gateway.upstream.answer_record import AnswerRecord


def streamed(*deltas: dict[str, object], usage: dict[str, int] | None = None) -> AnswerRecord:
    record = AnswerRecord()
    attempt = record.start_attempt("edge", "edge-1")
    for index, delta in enumerate(deltas):
        last = index == len(deltas) - 1
        chunk: dict[str, object] = {
            "id": "chatcmpl-1",
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if last else None}],
        }
        text = attempt.observe(chunk)
        if text:
            record.text.append(text)
    if usage is not None:
        attempt.observe({"choices": [], "usage": usage})
    return record


def completion(message: dict[str, object], **more: object) -> dict[str, object]:
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], **more}


def test_a_streamed_text_is_the_records_text() -> None:
    record = streamed({"role": "assistant", "content": "Hel"}, {"content": "lo."})
    assert plain_text(record, None) == "Hello."


def test_what_is_not_one_plain_text() -> None:
    calls = [{"index": 0, "id": "c", "type": "function", "function": {"name": "f"}}]
    assert plain_text(streamed({"tool_calls": calls}), None) is None
    assert plain_text(streamed({"reasoning_content": "hmm"}, {"content": "x"}), None) is None
    assert plain_text(streamed({"role": "assistant"}), None) is None  # no text at all
    record = streamed({"content": "x"})
    assert plain_text(record, completion({"role": "assistant", "content": None})) is None
    assert plain_text(record, completion({"content": "x", "tool_calls": calls})) is None
    two = {"choices": [completion({"content": "a"})["choices"][0]] * 2}  # type: ignore[index]
    assert plain_text(record, two) is None
    assert plain_text(record, {"choices": "nonsense"}) is None


def test_a_bodys_text_wins_the_plain_path_keeps_none_in_the_record() -> None:
    record = AnswerRecord()
    record.start_attempt("edge", "edge-1").model = "m"  # what the plain path notes
    body = completion({"role": "assistant", "content": "Answer."})
    assert plain_text(record, body) == "Answer."
    side = answer_side(record, body, "Answer.", duration_s=0.123456)
    assert side["finish_reason"] == "stop"  # read from the body
    assert side["duration_s"] == 0.1235 and side["model"] == "m" and side["node"] == "edge-1"


def test_an_answer_side_holds_tier_node_model_usage_and_id() -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    record = streamed({"content": "Hi"}, {"content": "!"}, usage=usage)
    assert answer_side(record, None, "Hi!", duration_s=1.0) == {
        "tier": "edge",
        "node": "edge-1",
        "model": "m",
        "response_id": "chatcmpl-1",
        "content": "Hi!",
        "finish_reason": "stop",
        "usage": usage,
        "duration_s": 1.0,
    }
