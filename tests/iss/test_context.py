"""Where the ISS block goes in the messages (pure functions), and the wire-format helpers."""

from __future__ import annotations

import copy

from services.common.openai_format import completion_from_chunks, text_chunks
from services.iss.block import BLOCK_END, BLOCK_START, inject, iss_block
from services.ops.redaction import redact_text

MESSAGES = [
    {"role": "system", "content": "persona"},
    {"role": "user", "content": "first"},
    {"role": "assistant", "content": "reply"},
    {"role": "user", "content": "second"},
    {"role": "tool", "content": "tool output", "tool_call_id": "c1"},
]


def test_user_mode_appends_to_the_last_user_message_only():
    original = copy.deepcopy(MESSAGES)
    result = inject(MESSAGES, "[B]", "user")
    assert MESSAGES == original  # the caller's list is not changed
    assert result[3]["content"] == "second\n\n[B]"
    assert [m for i, m in enumerate(result) if i != 3] == [m for i, m in enumerate(MESSAGES) if i != 3]


def test_system_mode_adds_a_trailing_system_message():
    result = inject(MESSAGES, "[B]", "system")
    assert result[:-1] == MESSAGES
    assert result[-1] == {"role": "system", "content": "[B]"}


def test_user_mode_without_user_message_falls_back_to_system():
    only_system = [{"role": "system", "content": "persona"}]
    assert inject(only_system, "[B]", "user")[-1] == {"role": "system", "content": "[B]"}


def test_off_mode_changes_nothing():
    assert inject(MESSAGES, "[B]", "off") == MESSAGES


def test_unavailable_block_is_delimited_and_honest():
    block = iss_block(None)
    assert block.startswith(BLOCK_START) and block.endswith(BLOCK_END)
    assert "unavailable" in block and "UTC" in block


def test_text_chunks_fold_back_into_a_completion():
    chunks = list(text_chunks(["Hello", " there"], "m", usage={"prompt_tokens": 1, "completion_tokens": 2,
                                                             "total_tokens": 3}))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 3
    completion = completion_from_chunks(chunks)
    assert completion["choices"][0]["message"] == {"role": "assistant", "content": "Hello there"}
    assert completion["usage"]["total_tokens"] == 3


def test_redact_removes_configured_secrets_and_key_shapes():
    text = redact_text("bad key my-server-secret and sk-abcdefghijklmnop", ["my-server-secret"])
    assert "my-server-secret" not in text and "sk-abcdefghijklmnop" not in text


def test_crew_line_only_for_a_usable_list_that_names_someone():
    from datetime import UTC, datetime, timedelta

    from services.iss.crew import Crew

    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert "Aboard the ISS (Open Notify's crew list, 2 h old): 1 person: Ana Vale." in iss_block(
        None, now, Crew(("Ana Vale",), now - timedelta(hours=2)))
    for crew in (None, Crew((), now), Crew(("<>[]",), now), Crew(("Ana Vale",), now - timedelta(days=7, seconds=1)),
                 Crew(("Ana Vale",), now + timedelta(hours=1))):
        assert "Aboard" not in iss_block(None, now, crew), crew


def test_the_block_memo_makes_one_block_per_state_and_a_new_one_for_each_new_state_or_crew():
    from datetime import UTC, datetime, timedelta

    from services.iss.block import BlockMemo
    from services.iss.crew import Crew
    from services.iss.state import IssState

    at = datetime(2026, 12, 1, 12, 0, 5, tzinfo=UTC)

    def state(second: int, latitude: float) -> IssState:
        return IssState(latitude=latitude, longitude=10.0, at=at + timedelta(seconds=second),
                        measured_at=at, source="wheretheiss", accuracy="live")

    memo = BlockMemo()
    first = state(0, 12.5)
    block, record = memo.of(first, None)
    assert block == iss_block(first) and "12.50°N" in block and record == first.to_dict()
    again = memo.of(first, None)
    assert again[0] is block and again[1] is record, "the same state: the same text, made once"
    # The next second's state, equal in place but another object, and a moved station: each read anew.
    moved = state(1, -33.25)
    block2, record2 = memo.of(moved, None)
    assert "33.25°S" in block2 and record2 == moved.to_dict() and record2["latitude"] == -33.25
    # A crew list fetched since: the same state, a new line.
    crew = Crew(("Ana Vale",), at - timedelta(hours=1))
    assert "Ana Vale" in memo.of(moved, crew)[0] and "Ana Vale" not in block2
    # No state: the honest unavailable block, with its moment, never kept.
    assert "unavailable" in memo.of(None, None)[0] and memo.of(None, None)[1] is None
