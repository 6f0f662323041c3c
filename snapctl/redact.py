"""Credentials out of words that were not ours to begin with.

snapctl's own messages never hold a secret, but many carry what an SDK or a server said: a
botocore ``EndpointConnectionError`` repeats the request URL (``user:password@`` included), a
google-api-core error the body of an answer that was not JSON (a gateway echoing the request,
``Authorization: Bearer ya29...`` included), a connection string or a SAS URL would keep its
``AccountKey=`` or ``sig=``. Every ``SnapctlError`` passes its message and hint through
``redact`` (snapctl/errors.py), so whatever the wrapped text held, what stderr, ``-o json``,
the manifests and the logs say of the error holds ``<redacted>`` in its place.

Only what is certainly a credential is replaced: a value after a name that says so. A run id, a
snapshot id or a path is never touched, so a message stays as useful as it was.
"""

from __future__ import annotations

import functools
import re

MARK = "<redacted>"

# A URL's user and password: scheme://user:secret@host -> scheme://<redacted>@host. Up to the
# last @ of the word: a secret key may hold / and @ (AWS's own example key holds /). The scheme
# starts where no scheme character comes before it, not at any \b: within a long run of such
# characters every \b was a start to try again from, and 40,000 of them took most of a second.
_USERINFO = r"((?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://)[^\s\"'<>]*@"
# Query parameters and connection-string fields that hold a credential (SAS signatures, signed
# URLs of S3 and GCS, OAuth tokens, Azure account keys), in a URL or a connection string.
_PARAMETER = (
    r"(?i)((?:^|[?&;\s\"'(])(?:sig|signature|x-amz-signature|x-amz-security-token|x-amz-credential|"
    r"x-goog-signature|x-goog-credential|access_token|id_token|refresh_token|client_secret|client_assertion|"
    r"assertion|api_key|apikey|key|token|password|accountkey|sharedaccesskey|sharedaccesssignature)=)"
    r"[^&;:\s\"'<>)]+")
# Headers and settings named as secrets, as a request dump, a config file or a JSON body writes
# them: "Authorization: Bearer ...", "'X-Amz-Security-Token': b'...'", "aws_secret_access_key =
# ...", '"password": "..."', "pg.password=...".
# A quoted value goes whole (cut short: to the end); a placeholder (<token>, in snapctl's own
# hints) is left alone.
_NAMED = (
    r"(?i)(\b(?:authorization|proxy-authorization|x-amz-security-token|x-goog-api-key|x-api-key|"
    r"aws_secret_access_key|aws_session_token|secret_access_key|session_token|client_secret|private_key_id)"
    r"[\"']?\s*[:=]\s*)(?:b?([\"'])(?!<)[^\"'\n]*(?:\2|$)|"
    r"(?:(?:bearer|basic|sharedkey|aws4-hmac-sha256)\s+)?+(?!<)[^\s\"',;&}]+)")
# Names common in plain words too ("the password file /etc/x.password: no such file"): only as a
# JSON or dict key ('"password": "..."') or set with = ("pg.password=...", "password = ...").
_LOOSE = (
    r"(?i)((?:\b(?:password|passwd|access_token|refresh_token|id_token|api_key|apikey)[\"']\s*:\s*)|"
    r"(?:\b(?:password|passwd|access_token|refresh_token|id_token|api_key|apikey)\s*=\s*))"
    r"(?:b?([\"'])(?!<)[^\"'\n]*(?:\2|$)|(?!<)[^\s\"',;&}]+)")
# A PEM private key, whole or cut short, its line breaks real or JSON-escaped.
_PRIVATE_KEY = r"(?s)-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"


def redact(text: str) -> str:
    """``text`` with every credential it holds replaced by ``<redacted>``."""
    if not text or not isinstance(text, str):
        return text
    private_key, userinfo, named, loose, parameter = _compiled()
    text = private_key.sub(MARK, text)
    text = userinfo.sub(rf"\1{MARK}@", text)
    text = named.sub(rf"\1{MARK}", text)
    text = loose.sub(rf"\1{MARK}", text)
    return parameter.sub(rf"\1{MARK}", text)


@functools.cache
def _compiled() -> tuple[re.Pattern[str], ...]:
    # On first use, not at import: every snapctl start imports the errors (1.3 ms of compiling).
    return tuple(re.compile(pattern) for pattern in (_PRIVATE_KEY, _USERINFO, _NAMED, _LOOSE, _PARAMETER))
