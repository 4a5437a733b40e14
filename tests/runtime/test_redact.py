"""The shared redaction: for any password, even one full of ``/ # ? @ % :`` left unescaped, none of it is shown."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from falachefe_runtime.redact import MASK, _redact, address, passwords, redact_text, redact_url, url_problem

#: User and host names: plain, so a password (which holds something else) can never be one of their substrings.
NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
#: Passwords: anything printable and not blank around a URL-breaking character and an "Ω" (which no
#: message or name holds: the password cannot be a piece of the redacted text by chance).
SPECIAL = "/#?@%:&=;'\"\\!$*+,[]{}"
PASSWORDS = st.builds(
    lambda head, special, tail: head + special + "Ω" + tail,
    st.text(st.characters(codec="utf-8", exclude_categories=("Z", "C")), max_size=16),
    st.sampled_from(SPECIAL),
    st.text(st.characters(codec="utf-8", exclude_categories=("Z", "C")), max_size=16),
)
SCHEMES = st.sampled_from(["redis", "rediss", "postgres", "postgresql", "REDIS"])
PORTS = st.integers(1, 65535)


@given(SCHEMES, NAMES, PASSWORDS, NAMES, PORTS, NAMES)
def test_a_urls_password_is_masked_whole_whatever_it_holds(
    scheme: str, user: str, password: str, host: str, port: int, path: str
) -> None:
    url = f"{scheme}://{user}:{password}@{host}:{port}/{path}"
    assert redact_url(url) == f"{scheme}://{user}:{MASK}@{host}:{port}/{path}"
    assert address(url) == f"{host}:{port}/{path}"
    message = f"Error connecting to {url}: Connection refused. (retrying {url}, 'x@y')"
    redacted = redact_text(message)
    assert password not in redacted
    assert redacted == message.replace(url, f"{scheme}://{user}:{MASK}@{host}:{port}/{path}")


@given(PASSWORDS, NAMES)
def test_a_redis_password_without_a_user_is_masked(password: str, host: str) -> None:
    for url in (f"redis://:{password}@{host}:6379/0", f"rediss://{password}@{host}"):
        assert password not in redact_url(url) and password not in redact_text(f"url={url}")
        assert host in redact_url(url)


@given(NAMES, PASSWORDS, NAMES)
def test_a_libpq_dsns_password_is_masked_quoted_or_bare(user: str, password: str, host: str) -> None:
    quoted = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    dsn = f"host={host} user={user} password={quoted} dbname=app"
    assert redact_url(dsn) == f"host={host} user={user} password={MASK} dbname=app"
    assert password not in redact_text(f"cannot connect with {dsn}")
    bare = password.replace("'", "").replace("\\", "")
    if bare and not bare.startswith("'"):
        assert bare not in redact_text(f"host={host} password = {bare}").split(f"host={host}", 1)[1]


@given(NAMES, PASSWORDS, NAMES)
def test_a_query_password_is_masked(user: str, password: str, host: str) -> None:
    url = f"postgresql://{user}@{host}/app?sslmode=require&password={password}"
    assert password not in redact_url(url) and password not in redact_text(f"dsn {url} failed")


@given(SCHEMES, PASSWORDS, NAMES)
def test_a_known_secrets_password_is_masked_anywhere_in_a_message(scheme: str, password: str, host: str) -> None:
    url = f"{scheme}://app:{password}@{host}:1/0"
    # A library that misparsed the URL quotes the password outside any URL.
    message = f"Port could not be cast to integer value as {password!r}; password {password} host {host}"
    assert password not in redact_text(message, url)
    assert password in passwords(url)


def test_a_url_whose_password_breaks_parsers_is_refused_naming_no_part_of_it() -> None:
    for password in ("Qx/Zy", "Kq#Wv", "J?V", "Qx/Jw#Kv?Zy@Vq%Xj:Wk"):
        problem = url_problem(f"redis://:{password}@127.0.0.1:6379/0")
        assert problem is not None and "percent-encode" in problem
        assert not any(piece in problem for piece in ("Q", "Z", "K", "J", "V", "W"))
    for url in ("redis://:p@w:x%2F@127.0.0.1/0", "redis://127.0.0.1:6379", "postgresql://u:p%2F@h/db", "host=h"):
        assert url_problem(url) is None


def test_text_without_secrets_is_left_alone() -> None:
    text = "redis://127.0.0.1:6379/0 is down; queue bull:whatsapp-processing; user@example.com wrote"
    assert redact_text(text) == text


#: Text near what the redaction looks for: pieces of schemes, password keywords in any case, and the
#: characters case-insensitive matching takes for their letters (U+017F, the long s, for "s";
#: U+212A, the Kelvin sign, for "k").
NEAR_MISSES = st.lists(
    st.one_of(
        st.sampled_from(
            ["://", ":/", "redis", "postgres", "pass", "PassWord", "passwd", "pas\u017fwd", "=", " = ", "@"]
        ),
        st.sampled_from(["'", "\u017f", "\u212a", "s", "S", "w", "W", "o", "r", "d", " ", ":", "/", "?", "&"]),
        st.text(max_size=4),
    ),
    max_size=12,
).map("".join)


@given(NEAR_MISSES)
def test_the_shortcut_for_text_without_a_password_changes_no_result(text: str) -> None:
    # redact_text skips the redaction when the text holds no "://" and no password keyword: the
    # full redaction must leave every such text as it is, and redact_text must agree with it on all text.
    assert redact_text(text) == _redact(text, ())


def test_the_shortcut_is_taken_only_without_secrets() -> None:
    assert redact_text("hunter2 was typed", "redis://:hunter2@h/0") == f"{MASK} was typed"
    assert redact_text("PASSWORD=x y") == f"PASSWORD={MASK} y"
    assert redact_text("pa\u017fsword=x y") == f"pa\u017fsword={MASK} y"  # as the patterns read it
