"""Hermes tool-call parsing never raises; every malformation becomes a parse error."""

import pytest

from kpop.rollout.tool_parser import MAX_CALL_CHARS, parse_action


def test_parses_one_and_several_calls():
    a = parse_action('x <tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call> y '
                     '<tool_call>{"name": "g", "arguments": "{\\"b\\": 2}"}</tool_call>')
    assert [(c.name, c.arguments) for c in a.tool_calls] == [("f", {"a": 1}), ("g", {"b": 2})]
    assert a.parse_errors == [] and a.tool_calls[1].id == "call_1"


def test_plain_text_has_no_calls():
    a = parse_action("Answer: 42")
    assert a.tool_calls == [] and a.parse_errors == [] and a.text == "Answer: 42"


@pytest.mark.parametrize("text, fragment", [
    ('<tool_call>{"name": "f", "arguments": {</tool_call>', "invalid JSON"),
    ("<tool_call>[1, 2]</tool_call>", "string 'name'"),
    ('<tool_call>{"arguments": {}}</tool_call>', "string 'name'"),
    ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', "must be a JSON object"),
    ('<tool_call>{"name": "f"', "missing </tool_call>"),
    ("<tool_call>" + '{"name": "f", "arguments": {"x": "' + "a" * MAX_CALL_CHARS + '"}}</tool_call>', "limit"),
    ("<tool_call>\x00\xff</tool_call>", "invalid JSON"),
])
def test_malformed_calls_become_errors(text, fragment):
    a = parse_action(text)
    assert a.tool_calls == []
    assert len(a.parse_errors) == 1 and fragment in a.parse_errors[0]


def test_good_calls_survive_a_bad_neighbour():
    a = parse_action('<tool_call>{bad}</tool_call><tool_call>{"name": "ok", "arguments": {}}</tool_call>')
    assert [c.name for c in a.tool_calls] == ["ok"] and len(a.parse_errors) == 1
