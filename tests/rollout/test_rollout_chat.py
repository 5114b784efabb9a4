"""Token-level chat formatting: prompt + turns + observations equals rendering everything at once."""

import pytest

from kpop.envs.contract import Message
from kpop.rollout.chat import ChatFormat


def test_appended_ids_equal_the_whole_rendered_conversation(tiny_tokenizer):
    chat = ChatFormat(tiny_tokenizer)
    system, user = Message("system", "Use the calculator."), Message("user", "What is 12*34?")
    turn1 = '<tool_call>{"name": "calculator", "arguments": {"expression": "12*34"}}</tool_call>'
    obs = [Message("tool", "408", name="calculator")]
    turn2 = "Answer: 408"
    ids = chat.prompt_ids([system, user]) + chat.turn_ids(turn1) + chat.observation_ids(obs) + chat.turn_ids(turn2)
    whole = tiny_tokenizer.apply_chat_template(
        [{"role": "system", "content": system.content}, {"role": "user", "content": user.content},
         {"role": "assistant", "content": turn1}, {"role": "tool", "content": "408", "name": "calculator"},
         {"role": "assistant", "content": turn2}], tokenize=False)
    assert ids == tiny_tokenizer.encode(whole, add_special_tokens=False)


def test_turn_ids_end_with_eos_and_decode_back(tiny_tokenizer):
    chat = ChatFormat(tiny_tokenizer)
    ids = chat.turn_ids("Answer: 7")
    assert ids[-1] == tiny_tokenizer.eos_token_id
    assert chat.decode(ids) == "Answer: 7"


def test_non_append_only_template_is_refused(tiny_tokenizer):
    import copy

    broken = copy.deepcopy(tiny_tokenizer)
    broken.chat_template = "{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="append-only"):
        ChatFormat(broken)
