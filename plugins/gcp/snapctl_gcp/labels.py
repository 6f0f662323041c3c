"""snapctl tags as GCP labels and names.

GCP labels take only lowercase letters, digits, ``-`` and ``_`` (keys start with a letter), at
most 63 characters, while run ids, versions and cluster names may carry ``.`` and capitals. So
every other character becomes ``_`` plus two hex digits of its UTF-8 bytes: reversible, and
deterministic, so ``find`` can encode the tags it looks for the same way. A value too long for a
label is replaced by a digest (still findable, not reversible). The raw tags also travel in the
snapshot's description, which is what ``tags_of`` reads back first.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_HEX_PAIR = re.compile(r"[0-9a-f]{2}")
MAX_LABEL = 63
DESCRIPTION_PREFIX = "snapctl tags "


def encode_label(text: str) -> str:
    encoded = "".join(ch if ch in _PLAIN else "".join(f"_{b:02x}" for b in ch.encode()) for ch in text)
    if len(encoded) > MAX_LABEL:
        # "_h" cannot come out of the escaping above, so a digest never reads back as a value.
        return "_h" + hashlib.sha256(text.encode()).hexdigest()[:40]
    return encoded


def encode_key(key: str) -> str:
    encoded = encode_label(key)
    # Keys must start with a letter. "k_k" does so and cannot be decoded ("_k" is no escape), so
    # such a key is found by its label but read back from the description only.
    return encoded if encoded[:1].isalpha() else ("k_k" + encoded)[:MAX_LABEL]


def decode_label(label: str) -> str | None:
    """The original text, or None for a digest or a label snapctl did not encode."""
    out = bytearray()
    index = 0
    while index < len(label):
        char = label[index]
        if char == "_":
            pair = label[index + 1:index + 3]
            if not _HEX_PAIR.fullmatch(pair):
                return None  # a digest ("_h...") or a foreign label
            out.append(int(pair, 16))
            index += 3
        elif char in _PLAIN:
            out.append(ord(char))
            index += 1
        else:
            return None
    try:
        return out.decode()
    except UnicodeDecodeError:
        return None


def labels_for(tags: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    labels = dict(extra or {})
    labels.update({encode_key(k): encode_label(v) for k, v in tags.items()})
    return labels


def description_for(tags: Mapping[str, str]) -> str:
    return DESCRIPTION_PREFIX + json.dumps(dict(tags), sort_keys=True, separators=(",", ":"))


def tags_of(description: str | None, labels: Mapping[str, str]) -> dict[str, str]:
    """The raw snapctl tags of a snapshot: from its description, else decoded from its labels."""
    if description and description.startswith(DESCRIPTION_PREFIX):
        try:
            tags = json.loads(description[len(DESCRIPTION_PREFIX):])
        except ValueError:
            tags = None
        if isinstance(tags, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            return tags
    decoded: dict[str, str] = {}
    for key, value in labels.items():
        raw_key, raw_value = decode_label(key), decode_label(value)
        if raw_key is not None and raw_value is not None:
            decoded[raw_key] = raw_value
    return decoded


def filter_for(tags: Mapping[str, str]) -> str:
    """A Compute list filter matching every tag (terms in parentheses are ANDed)."""
    return " ".join(f'(labels.{encode_key(k)} = "{encode_label(v)}")' for k, v in sorted(tags.items()))


def _slug(text: str, limit: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return slug or "x"


def cluster_prefix(cluster: str) -> str:
    """What every snapshot name of the cluster starts with: ``snapctl-<slug>--``.

    IAM conditions can test names but not labels, so this prefix is how a role is kept to one
    cluster. A slug never holds "--" nor ends in "-", so no cluster's prefix is a prefix of
    another's (with one "-", ``snapctl-prod-`` matched ``snapctl-prod-eu-...``). Clusters whose
    slugs are equal (``Prod.EU`` and ``prod-eu``, or the same first 20 characters) share it.
    """
    return f"snapctl-{_slug(cluster, 20)}--"


def snapshot_name(cluster: str, node: str, volume: str) -> str:
    """Unique, at most 63 characters, ``[a-z]([-a-z0-9]*[a-z0-9])?``: readable prefix, random tail.
    Nothing reads a name back (snapshots are found by their labels), so the scheme may change."""
    return f"{cluster_prefix(cluster)}{_slug(node, 12)}-{_slug(volume, 8)}-{uuid.uuid4().hex[:10]}"


def restored_disk_name(snapshot: str) -> str:
    return f"{snapshot[:50].rstrip('-')}-r{uuid.uuid4().hex[:6]}"
