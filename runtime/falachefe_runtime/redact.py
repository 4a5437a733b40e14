"""One redaction for connection strings, shared by the workers and the operator.

A Redis URL or a PostgreSQL DSN holds a password; whatever may show one (an
error message, a log line, a status condition, an Event) goes through
``redact_text`` first, and a URL shown on purpose goes through
``redact_url``.

Passwords are often pasted unescaped, with ``/``, ``#``, ``?``, ``@``,
``%`` or ``:`` in them. A URL parser then cuts the user information at the
first ``/``, ``?`` or ``#`` and takes the rest of the password for a host,
port or path, which is how part of a password ends up in a message. Here
the user information runs from ``scheme://`` to the *last* ``@`` before
the next blank (or a query's ``password=``), so a password stays whole
whatever it holds; a ``@`` later in the URL (another query value) makes
more of it redacted, never less. Such a
URL is refused before any client parses it (``url_problem``), so no
library ever sees its pieces as a host or a port.

libpq's ``key=value`` form is covered by its ``password`` keyword, quoted
or bare; so is a ``password=`` query parameter of a URL.

Pure: no I/O, so the operator's pure core (conditions) can use it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

#: What replaces a password.
MASK = "***"
#: URL schemes whose user information may hold a password.
SCHEMES = ("redis", "rediss", "unix", "postgres", "postgresql")
#: Characters that end a URL's user information for every parser; unescaped in it, they break the URL.
BREAKING = "/?#"

_URL_START = re.compile(r"(?<![\w+.-])(?:" + "|".join(SCHEMES) + r")://", re.IGNORECASE)
#: libpq's ``password`` keyword (also ``sslpassword``), and a URL query's ``password=``: quoted to its
#: closing quote (or the end), bare to the next blank, which in a URL also swallows any later parameters.
_PASSWORD_PAIR = re.compile(
    r"(?P<key>\b(?:ssl)?pass(?:word|wd)\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*(?:'|$)|\S*)", re.IGNORECASE
)
_BLANK = re.compile(r"\s")
_NOT_A_USER = re.compile(r"[@/?#=&]")
_QUERY_PASSWORD = re.compile(r"[?&](?:ssl)?pass(?:word|wd)\s*=", re.IGNORECASE)
#: What any text ``redact_text`` changes must hold (without ``secrets``): a URL's ``://`` or a password
#: keyword, matched with the same case rules as the patterns above. One C-level scan of a log field
#: (3 us a string through the full redaction, 0.2 us through this), and most fields hold neither.
_MAY_HOLD_A_PASSWORD = re.compile(r"://|pass(?:word|wd)", re.IGNORECASE)


def _split(url: str) -> tuple[str, str | None, str]:
    """``(scheme://, user information or None, the rest)``; the user information ends at the last ``@``."""
    head_end = url.index("://") + 3
    head, after = url[:head_end], url[head_end:]
    # A query's password may hold a '@' too: the user information ends before the query's password.
    query_password = _QUERY_PASSWORD.search(after)
    at = after.rfind("@", 0, query_password.start() if query_password else len(after))
    if at < 0:
        return head, None, after
    return head, after[:at], after[at + 1 :]


def _masked_userinfo(head: str, userinfo: str) -> str:
    """``user:***``, or ``***`` when it is not clear what the user is.

    Without a ``:``, a Redis URL's lone user information may be a password;
    a "user" holding ``@``, ``/``, ``?``, ``#``, ``=`` or ``&`` means the
    last ``@`` was further on (a query value): all of it is masked.
    """
    user, colon, password = userinfo.partition(":")
    if _NOT_A_USER.search(user) or (colon and not password):
        return MASK  # an empty password after the ':' may well mean the ':' was part of the password
    if colon:
        return user + ":" + MASK
    return userinfo if head.lower().startswith("postgres") else MASK


def redact_url(url: str) -> str:
    """``url`` with its password (in the user information or the query) replaced by ``***``.

    Text that is not a URL of one of ``SCHEMES`` is treated as a libpq
    ``key=value`` DSN: its ``password`` value is masked.
    """
    if not _URL_START.match(url):
        return _PASSWORD_PAIR.sub(lambda match: match["key"] + MASK, url)
    head, userinfo, rest = _split(url)
    masked = head if userinfo is None else head + _masked_userinfo(head, userinfo) + "@"
    return masked + _PASSWORD_PAIR.sub(lambda match: match["key"] + MASK, rest)


def redact_text(text: str, *secrets: str | None) -> str:
    """``text`` with every URL's and DSN's password masked, and every password of ``secrets`` too.

    A URL in running text ends at the next blank (or where another one
    starts). ``secrets`` are the connection strings the caller knows are in
    play: their passwords (as written and percent-decoded) are masked
    wherever they appear, even outside any URL (a library quoting a piece
    of one).
    """
    if not secrets and not _MAY_HOLD_A_PASSWORD.search(text):
        return text
    return _redact(text, secrets)


def _redact(text: str, secrets: tuple[str | None, ...]) -> str:
    """``redact_text`` without its shortcut for text that cannot hold a password."""
    pieces = []
    position = 0
    for match in _URL_START.finditer(text):
        if match.start() < position:
            continue
        end = _url_end(text, match.end())
        pieces.append(text[position : match.start()])
        pieces.append(redact_url(text[match.start() : end]))
        position = end
    pieces.append(text[position:])
    redacted = _PASSWORD_PAIR.sub(lambda match: match["key"] + MASK, "".join(pieces))
    for password in sorted({word for secret in secrets if secret for word in passwords(secret)}, key=len, reverse=True):
        redacted = redacted.replace(password, MASK)
    return redacted


def _url_end(text: str, start: int) -> int:
    blank = _BLANK.search(text, start)
    end = blank.start() if blank else len(text)
    following = _URL_START.search(text, start, end)
    return following.start() if following else end


def passwords(secret: str) -> list[str]:
    """The password(s) a URL or a DSN holds, as written and percent-decoded; none if it holds none."""
    found = []
    if _URL_START.match(secret):
        head, userinfo, rest = _split(secret)
        if userinfo is not None:
            masked = _masked_userinfo(head, userinfo)
            if masked == MASK:
                found.append(userinfo)
            elif masked != userinfo:
                found.append(userinfo.split(":", 1)[1])
        secret = rest
    for match in _PASSWORD_PAIR.finditer(secret):
        value = match["value"]
        if value.startswith("'"):
            value = value[1:-1] if len(value) > 1 and value.endswith("'") else value[1:]
            found.append(re.sub(r"\\(.)", r"\1", value))  # libpq's escapes: \' and \\
        found.append(value)
    return [word for password in found if password for word in {password, unquote(password)}]


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be used as written (it names no part of the value), or None.

    A ``/``, ``?`` or ``#`` in the user information makes every URL parser
    (redis-py, Node's ``URL``, libpq) take part of the password for the
    host, port or path: connecting would fail in misleading ways, and
    their errors would quote those pieces.
    """
    if not _URL_START.match(url):
        return None
    _, userinfo, _ = _split(url)
    if userinfo is not None and any(char in userinfo for char in BREAKING):
        return (
            "its user or password holds '/', '?' or '#' unescaped (or a '@' follows the host):"
            " percent-encode them (%2F, %3F, %23, %40)"
        )
    return None


def address(url: str) -> str:
    """``host:port/path`` of a URL, with no user information, for messages."""
    if not _URL_START.match(url):
        return "(not a URL)"
    _, _, rest = _split(url)
    return re.split(r"[?#\s]", rest, maxsplit=1)[0]
