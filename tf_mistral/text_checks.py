"""The check on text a user passes in: a str, or bytes that are UTF-8.

Shared by the tokenizer (`MistralTokenizer.__call__`) and the chat formats (message contents). A
leaf module, standard library only, so that both import it at the top of their files without
importing each other.
"""


def check_text(value: object, where: str) -> str:
    """`value` as a str (UTF-8 bytes are decoded), or an error that names `where` it came from.

    Raises:
        TypeError: `value` is neither str nor bytes.
        ValueError: bytes that are not valid UTF-8, or a str that cannot be encoded as UTF-8
            (a lone surrogate such as "\\ud800").
    """
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{where} is bytes that are not valid UTF-8 ({error})") from None
    if not isinstance(value, str):
        raise TypeError(f"{where} is {type(value).__name__} ({value!r:.40}); expected str")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{where} cannot be encoded as UTF-8 ({error})") from None
    return value
