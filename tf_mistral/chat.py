"""Mistral chat formats, equal token for token to mistral-common's `encode_chat_completion`.

Two formats (mistral-common `MistralTokenizer.v1()` and `.v3()`):

v1, Mistral-7B Instruct v0.1 / v0.2 (32000 pieces, no chat control tokens):
    <s> sp("[INST] {user} [/INST]") sp("{assistant}") </s> sp("[INST] {user} [/INST]") ...
    "[INST]" is plain text, and every turn is a separate sentencepiece call with its own
    dummy-prefix "▁": "[INST]" -> "▁[", "INST", "]" (733, 16289, 28793). Assistant text is kept
    as is (trailing spaces too). The system prompt goes into the FIRST user turn.
v3, Mistral-7B Instruct v0.3 (32768 pieces):
    <s> [INST] sp("{user}") [/INST] sp("{assistant}".rstrip(" ")) </s> [INST] ...
    [INST] = 3 and [/INST] = 4 are control ids. The system prompt goes into the LAST user turn.

In both, a system prompt becomes "{system}\\n\\n{user}" in its user turn. Before formatting,
messages are normalised as mistral-common does:
  - the non-empty system messages, joined with "\\n\\n", form the system prompt, and are removed;
  - consecutive messages of one role are merged, their non-empty contents joined with "\\n\\n"
    (a system message in between keeps them apart: [user, system, user] is two user turns);
  - an empty user turn is inserted first when the conversation does not start with one.
Conversations mistral-common rejects are errors here too: an empty conversation, unknown roles,
an empty assistant message, a system message right after an assistant message, a conversation
that is a single assistant message, and (with `add_generation_prompt`) one that ends with an
assistant message. Tool messages are not supported.

`encode_chat` is the Python entry point (errors name the message index and role);
`encode_chat_tensors` is the same computation from tf.string ops, for graphs and SavedModels.
"""

from collections.abc import Mapping, Sequence
from typing import Protocol

import tensorflow as tf

from tf_mistral.text_checks import check_text

ROLES = ("system", "user", "assistant")
_SYSTEM, _USER, _ASSISTANT = range(3)  # indices in ROLES
_SEPARATOR = "\n\n"


class ChatTokenizer(Protocol):
    """What the chat formats use of a tokenizer (`MistralTokenizer` is one)."""

    chat_format: str  # "v1" or "v3"
    special_tokens: dict[str, int]  # control pieces -> ids: "[INST]", "[/INST]" in v3
    eos_token_id: int

    def tokenize(self, texts: tf.Tensor, add_special_tokens: bool = True) -> tf.RaggedTensor: ...

    def add_special_tokens(self, ids: tf.RaggedTensor, add_bos: bool, add_eos: bool) -> tf.RaggedTensor: ...


def check_conversation(
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    index: int | None = None,
) -> tuple[list[str], list[str]]:
    """Validate one conversation as mistral-common does; return (roles, contents), lists of str.

    `index` (the conversation's place in a batch) prefixes error messages.
    """
    where = "" if index is None else f"conversation {index}, "
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        kind = type(messages).__name__
        raise TypeError(f"{where}a conversation is a list of {{'role', 'content'}} dicts, got {kind}")
    if not messages:
        raise ValueError(f"{where}the conversation is empty: give at least one user message")
    roles, contents = [], []
    for i, message in enumerate(messages):
        role, content = _check_message(message, f"{where}message {i}")
        if role == "system" and roles and roles[-1] == "assistant":
            raise ValueError(
                f"{where}message {i}: a system message cannot follow an assistant message (mistral-common rejects it)"
            )
        roles.append(role)
        contents.append(content)
    last = f"{where}message {len(roles) - 1}"
    if roles == ["assistant"]:
        raise ValueError(f"{last}: a conversation cannot be a single assistant message; start with a user message")
    if continue_final_message and roles[-1] != "assistant":
        raise ValueError(
            f"{last} is a {roles[-1]} message: continue_final_message=True needs a final assistant message"
        )
    if add_generation_prompt and not continue_final_message and roles[-1] == "assistant":
        raise ValueError(
            f"{last} is an assistant message, so there is no reply to prompt for: pass add_generation_prompt=False "
            "to encode the finished conversation (ends with </s>, for training), or continue_final_message=True "
            "to let the model continue that message"
        )
    return roles, contents


def _check_message(message, where):
    if not isinstance(message, Mapping):
        raise TypeError(f"{where} is a {type(message).__name__}; expected a dict with 'role' and 'content'")
    role, content = message.get("role"), message.get("content")
    if role == "tool":
        raise ValueError(f"{where} has role 'tool': tool calls are not supported")
    if role not in ROLES:
        raise ValueError(f"{where} has role {role!r}; Mistral chat formats know {ROLES}")
    content = check_text(content, f"{where} ({role}) content")
    if role == "assistant" and not content:
        raise ValueError(f"{where} is an empty assistant message (mistral-common rejects it)")
    return role, content


def encode_chat(
    tokenizer: ChatTokenizer,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> list[int]:
    """Token ids (list of int) of one conversation: a list of {"role", "content"} dicts.

    add_generation_prompt: the ids end where the reply starts; a final assistant message is an
        error. False: a final assistant message is encoded with </s> (training data).
    continue_final_message: the final assistant message is left open (no </s>; mistral-common's
        `prefix=True`) for the model to continue; overrides `add_generation_prompt`.
    """
    roles, contents = check_conversation(messages, add_generation_prompt, continue_final_message)
    ids = encode_chat_tensors(
        tokenizer, tf.constant(roles), tf.constant(contents), add_generation_prompt, continue_final_message
    )
    return ids.numpy().tolist()


def encode_chat_tensors(
    tokenizer: ChatTokenizer,
    roles: tf.Tensor | tf.RaggedTensor | Sequence[str],
    contents: tf.Tensor | tf.RaggedTensor | Sequence[str],
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> tf.Tensor | tf.RaggedTensor:
    """In-graph chat encoding, equal to `encode_chat`.

    roles, contents: tf.string [messages] (one conversation) -> int32 [tokens]; or tf.string
    RaggedTensors [batch, None] -> int32 RaggedTensor [batch, None]. Invalid conversations fail
    `tf.debugging` assertions (InvalidArgumentError) with the rule and offending positions.
    """
    if not isinstance(roles, tf.RaggedTensor):
        roles = tf.RaggedTensor.from_tensor(tf.convert_to_tensor(roles, tf.string)[tf.newaxis])
        contents = tf.RaggedTensor.from_tensor(tf.convert_to_tensor(contents, tf.string)[tf.newaxis])
        return encode_chat_tensors(tokenizer, roles, contents, add_generation_prompt, continue_final_message)[0]
    codes = _role_codes(roles.flat_values)
    checks = _assert_valid(roles, codes, contents.flat_values, add_generation_prompt, continue_final_message)
    turn_codes, turn_texts, system_prompt, has_system = _normalize(roles, codes, contents.flat_values)
    turn_texts = _place_system_prompt(turn_codes, turn_texts, system_prompt, has_system, tokenizer.chat_format)
    ids = _format_turns(tokenizer, turn_codes, turn_texts, continue_final_message)
    with tf.control_dependencies(checks):
        return ids.with_flat_values(tf.identity(ids.flat_values))


def _role_codes(roles):
    """tf.string [messages] -> int32 [messages]: the index in ROLES, -1 for an unknown role."""
    codes = tf.fill(tf.shape(roles), -1)
    for code, name in enumerate(ROLES):
        codes = tf.where(tf.equal(roles, name), code, codes)
    return codes


def _assert_valid(roles, codes, contents, add_generation_prompt, continue_final_message):
    """tf.debugging checks of mistral-common's rules. codes: int32 [messages], -1 = unknown role."""
    position = tf.ragged.range(roles.row_lengths()).flat_values
    previous = tf.concat([[-1], codes[:-1]], axis=0)
    row = roles.value_rowids()
    lengths = roles.row_lengths()
    last = roles.with_flat_values(codes)[:, -1:].to_tensor(_USER, shape=tf.stack([roles.nrows(), 1]))[:, 0]  # [batch]
    system_after_assistant = (position > 0) & tf.equal(previous, _ASSISTANT) & tf.equal(codes, _SYSTEM)
    empty_assistant = tf.equal(codes, _ASSISTANT) & tf.equal(contents, "")
    lone_assistant = tf.equal(lengths, 1) & tf.equal(last, _ASSISTANT)
    checks = [
        _check(codes >= 0, "chat roles must be system, user or assistant; got:",
               tf.boolean_mask(roles.flat_values, codes < 0)),
        _check(lengths > 0, "empty conversations at batch index:", tf.where(tf.equal(lengths, 0))),
        _check(~system_after_assistant, "system message right after an assistant message at (conversation, message):",
               tf.boolean_mask(row, system_after_assistant), tf.boolean_mask(position, system_after_assistant)),
        _check(~empty_assistant, "empty assistant message at (conversation, message):",
               tf.boolean_mask(row, empty_assistant), tf.boolean_mask(position, empty_assistant)),
        _check(~lone_assistant, "conversations that are a single assistant message:", tf.where(lone_assistant)),
    ]
    if continue_final_message:
        ends_open = tf.equal(last, _ASSISTANT)
        checks.append(_check(ends_open, "continue_final_message needs a final assistant message; conversations:",
                             tf.where(~ends_open)))
    elif add_generation_prompt:
        ends_closed = tf.not_equal(last, _ASSISTANT)
        checks.append(_check(ends_closed, "a final assistant message needs add_generation_prompt=False or "
                             "continue_final_message; conversations:", tf.where(~ends_closed)))
    return checks


def _check(condition, message, *offending):
    return tf.debugging.Assert(tf.reduce_all(condition), [message, *offending])


def _normalize(roles, codes, contents):
    """mistral-common's normalisation (see the module docstring).

    Returns turn codes and texts as RaggedTensors [batch, turns] (every row starts with a user
    turn), the system prompt tf.string [batch] and whether there is one, bool [batch].
    """
    batch = roles.nrows()
    row = roles.value_rowids()
    position = tf.ragged.range(roles.row_lengths()).flat_values
    system = tf.equal(codes, _SYSTEM) & tf.not_equal(contents, "")
    system_prompt = tf.strings.unsorted_segment_join(
        tf.boolean_mask(contents, system), tf.boolean_mask(row, system), batch, separator=_SEPARATOR
    )
    has_system = tf.math.unsorted_segment_max(tf.cast(system, tf.int32), row, batch) > 0

    # Runs of one role (system messages included, so they separate runs), merged into one text.
    previous = tf.concat([[-1], codes[:-1]], axis=0)
    opens = tf.equal(position, 0) | tf.not_equal(codes, previous)
    run = tf.cumsum(tf.cast(opens, tf.int32)) - 1
    nonempty = tf.not_equal(contents, "")
    runs = tf.reduce_sum(tf.cast(opens, tf.int32))
    run_text = tf.strings.unsorted_segment_join(
        tf.boolean_mask(contents, nonempty), tf.boolean_mask(run, nonempty), runs, separator=_SEPARATOR
    )
    run_code, run_row = tf.boolean_mask(codes, opens), tf.boolean_mask(row, opens)
    turn = tf.not_equal(run_code, _SYSTEM)
    turn_codes = tf.RaggedTensor.from_value_rowids(
        tf.boolean_mask(run_code, turn), tf.boolean_mask(run_row, turn), nrows=batch
    )
    turn_texts = turn_codes.with_flat_values(tf.boolean_mask(run_text, turn))

    first = turn_codes[:, :1].to_tensor(-1, shape=tf.stack([batch, 1]))  # int32 [batch, 1]
    insert = tf.not_equal(first, _USER)
    turn_codes = tf.concat([tf.ragged.boolean_mask(tf.fill(tf.shape(first), _USER), insert), turn_codes], axis=1)
    turn_texts = tf.concat([tf.ragged.boolean_mask(tf.fill(tf.shape(first), ""), insert), turn_texts], axis=1)
    return turn_codes, turn_texts, system_prompt, has_system


def _place_system_prompt(turn_codes, turn_texts, system_prompt, has_system, chat_format):
    """Prefix "{system}\\n\\n" to the first (v1) or last (v3) user turn. Ragged [batch, turns]."""
    position = tf.ragged.range(turn_codes.row_lengths())
    user_positions = tf.ragged.boolean_mask(position, tf.equal(turn_codes, _USER))
    target = tf.reduce_min(user_positions, axis=1) if chat_format == "v1" else tf.reduce_max(user_positions, axis=1)
    row = turn_codes.value_rowids()
    add = tf.equal(position.flat_values, tf.gather(target, row)) & tf.gather(has_system, row)
    texts = turn_texts.flat_values
    return turn_texts.with_flat_values(tf.where(add, tf.gather(system_prompt, row) + _SEPARATOR + texts, texts))


def _format_turns(tokenizer, turn_codes, turn_texts, continue_final_message):
    """Turns -> ids: <s> then each turn in the tokenizer's chat format. int32 RaggedTensor [batch, None]."""
    codes, texts = turn_codes.flat_values, turn_texts.flat_values
    user = tf.equal(codes, _USER)
    position = tf.ragged.range(turn_codes.row_lengths()).flat_values
    final = tf.equal(position, tf.gather(turn_codes.row_lengths() - 1, turn_codes.value_rowids()))
    eos = ~user & ~(final & continue_final_message)
    if tokenizer.chat_format == "v1":
        texts = tf.where(user, "[INST] " + texts + " [/INST]", texts)
        parts = [tokenizer.tokenize(texts, add_special_tokens=False), _masked_column(tokenizer.eos_token_id, eos)]
    else:
        texts = tf.where(user, texts, tf.strings.regex_replace(texts, " +$", ""))
        parts = [
            _masked_column(tokenizer.special_tokens["[INST]"], user),
            tokenizer.tokenize(texts, add_special_tokens=False),
            _masked_column(tokenizer.special_tokens["[/INST]"], user),
            _masked_column(tokenizer.eos_token_id, eos),
        ]
    turn_ids = tf.concat(parts, axis=1)
    ids = tf.RaggedTensor.from_row_splits(turn_ids, turn_codes.row_splits).merge_dims(1, 2)
    return tokenizer.add_special_tokens(ids, add_bos=True, add_eos=False)


def _masked_column(value, mask):
    """int32 RaggedTensor [len(mask), 0 or 1]: `value` where mask is True."""
    column = tf.fill(tf.stack([tf.size(mask), 1]), tf.constant(value, tf.int32))
    return tf.ragged.boolean_mask(column, mask[:, tf.newaxis])
