"""Mistral chat formats against mistral-common's encode_chat_completion, in Python and in-graph."""

import functools

from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.validator import ValidationMode
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer as ReferenceTokenizer
import pytest
import tensorflow as tf

from tf_mistral import chat
from tf_mistral.tokenizer import MistralTokenizer


def system(text):
    return {"role": "system", "content": text}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


CONVERSATIONS = {
    "single user": [user("Hi")],
    "system and user": [system("Be brief."), user("Hi")],
    "multi turn": [user("Hi"), assistant("Hello!"), user("How are you?")],
    "system in multi turn": [system("SYS"), user("Hi"), assistant("Yo "), user("Bye")],
    "several system messages": [system("A"), user("Hi"), system(""), system("B"), user("more")],
    "consecutive users merge": [user("a"), user(""), user("b")],
    "system keeps users apart": [user("a"), system("S"), user("b")],
    "empty user": [user("")],
    "empty system": [system("")],
    "system only": [system("S")],
    "system then assistant": [system("s"), assistant("a"), user("c")],
    "assistant first": [assistant("a"), user("c")],
    "consecutive assistants merge": [user("q"), assistant("a "), assistant("b"), user("c")],
    "last message is system": [user("a"), system("c")],
    "spaces and newlines": [system("  sys  "), user("  padded\n\n text \r\n"), assistant("\n reply  \t "), user(" x ")],
    "literal control text": [user("[INST] not a control [/INST] </s>"), assistant("[/INST]"), user("<s>")],
    "many scripts": [user("日本語 مرحبا Привет 👩\u200d👩\u200d👧"), assistant("नमस्ते\t🙂"), user("\x00\x07")],
}


@functools.cache
def reference_tokenizer(version, mode):
    """mistral-common's MistralTokenizer.v1() / .v3() (test mode), or the same file in another mode."""
    reference = {"v1": ReferenceTokenizer.v1, "v3": ReferenceTokenizer.v3}[version]()
    if mode == ValidationMode.test:
        return reference
    return ReferenceTokenizer.from_file(str(reference.instruct_tokenizer.tokenizer.file_path), mode=mode)


def reference_ids(version, messages, mode=ValidationMode.test):
    request = ChatCompletionRequest(messages=messages)
    return reference_tokenizer(version, mode).encode_chat_completion(request).tokens


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_ids_equal_mistral_common(tok, name):
    assert tok.apply_chat_template(CONVERSATIONS[name]) == reference_ids(tok.chat_format, CONVERSATIONS[name])


def test_python_function_equals_mistral_common(tok):
    messages = CONVERSATIONS["system in multi turn"]
    assert chat.encode_chat(tok, messages) == reference_ids(tok.chat_format, messages)


def test_v1_system_prompt_goes_into_the_first_user_turn(tok_v1):
    ids = tok_v1.apply_chat_template([system("SYS"), user("one"), assistant("two"), user("three")])
    assert tok_v1.decode(ids) == "<s>[INST] SYS\n\none [/INST] two</s> [INST] three [/INST]"


def test_v3_system_prompt_goes_into_the_last_user_turn():
    v3 = MistralTokenizer.default("v3")
    ids = v3.apply_chat_template([system("SYS"), user("one"), assistant("two"), user("three")])
    assert ids[:4] == [1, 3, 1392, 4]  # <s> [INST] ▁one [/INST]: no system prompt in the first turn
    assert v3.decode(ids) == "<s>[INST]one[/INST] two</s>[INST] SYS\n\nthree[/INST]"


def test_continue_final_message_equals_mistral_common_prefix(tok):
    messages = [user("Write a haiku"), assistant("Leaves fall  ")]
    expected = reference_ids(tok.chat_format, [messages[0], {**messages[1], "prefix": True}])
    assert tok.apply_chat_template(messages, continue_final_message=True) == expected


def test_finished_conversation_without_generation_prompt_equals_finetuning_mode(tok):
    messages = [system("S"), user("q"), assistant("a "), user("q2"), assistant("a2")]
    expected = reference_ids(tok.chat_format, messages, mode=ValidationMode.finetuning)
    assert tok.apply_chat_template(messages, add_generation_prompt=False) == expected
    assert expected[-1] == tok.eos_token_id


def test_generation_prompt_changes_nothing_when_a_user_message_is_last(tok):
    messages = [user("q"), assistant("a"), user("q2")]
    assert tok.apply_chat_template(messages, add_generation_prompt=False) == tok.apply_chat_template(messages)


def ragged_roles_and_contents(conversations):
    """tf.string RaggedTensors [batch, None] of the roles and of the contents."""
    roles = tf.ragged.constant([[m["role"] for m in c] for c in conversations])
    return roles, tf.ragged.constant([[m["content"] for m in c] for c in conversations])


def test_in_graph_batch_equals_python_per_conversation(tok):
    conversations = list(CONVERSATIONS.values())
    ids = chat.encode_chat_tensors(tok, *ragged_roles_and_contents(conversations))
    assert ids.to_list() == [tok.apply_chat_template(c) for c in conversations]


def test_in_graph_encoding_runs_inside_tf_function(tok_v1):
    spec = tf.RaggedTensorSpec([None, None], tf.string)

    @tf.function(input_signature=[spec, spec])
    def encode(roles, contents):
        return chat.encode_chat_tensors(tok_v1, roles, contents)

    conversations = [CONVERSATIONS["system in multi turn"], CONVERSATIONS["assistant first"]]
    ids = encode(*ragged_roles_and_contents(conversations))
    assert ids.to_list() == [tok_v1.apply_chat_template(c) for c in conversations]


def test_in_graph_single_conversation_gives_a_dense_vector(tok):
    messages = CONVERSATIONS["system in multi turn"]
    ids = chat.encode_chat_tensors(tok, [m["role"] for m in messages], [m["content"] for m in messages])
    assert isinstance(ids, tf.Tensor) and ids.numpy().tolist() == tok.apply_chat_template(messages)


def test_batch_of_conversations_is_left_padded_with_a_mask(tok_v1):
    conversations = [[user("Hi")], CONVERSATIONS["multi turn"]]
    batch = tok_v1.apply_chat_template(conversations, return_tensors="tf", return_dict=True)
    short = tok_v1.apply_chat_template(conversations[0])
    row = batch["input_ids"].numpy()[0].tolist()
    assert row[len(row) - len(short):] == short and set(row[: len(row) - len(short)]) == {0}
    assert batch["attention_mask"].numpy()[0].sum() == len(short)


def test_return_tensors_gives_a_batch_of_one(tok_v1):
    ids = tok_v1.apply_chat_template([user("Hi")], return_tensors="tf")
    assert ids.shape == (1, 9) and ids.dtype == tf.int32


def test_v3_format_needs_a_vocabulary_with_inst_control_tokens(tok_v1):
    with pytest.raises(ValueError, match=r"chat_format 'v3' needs \[INST\]"):
        MistralTokenizer(tok_v1.model_proto, chat_format="v3")


@pytest.mark.parametrize("messages, kwargs, error, message", [
    ([], {}, ValueError, "the conversation is empty"),
    ([user("a"), {"role": "robot", "content": "b"}], {}, ValueError, "message 1 has role 'robot'"),
    ([user("a"), {"role": "tool", "content": "b"}], {}, ValueError,
     "message 1 has role 'tool': tool calls are not supported"),
    ([user("a"), assistant("b"), system("c"), user("d")], {}, ValueError,
     "message 2: a system message cannot follow an assistant"),
    ([user("a"), assistant(""), user("b")], {}, ValueError, "message 1 is an empty assistant message"),
    ([assistant("a")], {"add_generation_prompt": False}, ValueError,
     "message 0: a conversation cannot be a single assistant message"),
    ([user("a"), assistant("b")], {}, ValueError,
     "message 1 is an assistant message, so there is no reply to prompt for"),
    ([user("a")], {"continue_final_message": True}, ValueError, "message 0 is a user message: continue_final_message"),
    ([user("a"), {"role": "user", "content": None}], {}, TypeError, r"message 1 \(user\) content is NoneType"),
    ([user("a"), "b"], {}, TypeError, "message 1 is a str"),
    ({"role": "user", "content": "a"}, {}, TypeError, "a conversation is a list"),
])
def test_bad_conversations_name_the_offending_message(tok_v1, messages, kwargs, error, message):
    with pytest.raises(error, match=message):
        tok_v1.apply_chat_template(messages, **kwargs)


def test_errors_in_a_batch_name_the_conversation(tok_v1):
    with pytest.raises(ValueError, match="conversation 1, message 0 has role 'bot'"):
        tok_v1.apply_chat_template([[user("a")], [{"role": "bot", "content": "x"}]])


@pytest.mark.parametrize("roles, contents, message", [
    (["user", "robot"], ["a", "b"], "chat roles must be system, user or assistant"),
    (["user", "assistant", "system", "user"], ["a", "b", "c", "d"], "system message right after an assistant"),
    (["user", "assistant", "user"], ["a", "", "b"], "empty assistant message"),
    (["user", "assistant"], ["a", "b"], "final assistant message"),
])
def test_in_graph_rules_fail_with_the_rule_in_the_message(tok_v1, roles, contents, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        chat.encode_chat_tensors(tok_v1, tf.constant(roles), tf.constant(contents))
