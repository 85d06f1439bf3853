"""web/i18n: every page's text in Vietnamese and English, both complete.

The pages name their text by key (templates: ``_("key")``, ``data-i18n``, ``data-i18n-attr``;
scripts: ``t("key")``): a key missing from a catalogue would show the key itself to an
official, and a placeholder missing from one language would drop a name or a number there.
"""

from __future__ import annotations

import re

import pytest

from server.pages import I18N_DIR, LANGUAGES, WEB_DIR, load_strings

PLACEHOLDER = re.compile(r"\{(\w+)\}")
# Literal keys only: a key built at run time ("rooms.state_" + state) ends in "_" or ".".
KEY = r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]*[a-z0-9])+"
TEMPLATE_KEYS = (
    re.compile(rf"""\b_\(\s*["']({KEY})["']"""),
    re.compile(rf'data-i18n="({KEY})"'),
)
ATTRIBUTE_KEYS = re.compile(r'data-i18n-attr="([^"]+)"')
SCRIPT_KEYS = re.compile(rf"""\b(?:t|tAlt)\(\s*["']({KEY})["']""")


@pytest.fixture(scope="module")
def strings() -> dict[str, dict[str, str]]:
    return load_strings(I18N_DIR)


def used_keys() -> dict[str, set[str]]:
    """Each key the templates and scripts name literally, with the files naming it."""
    found: dict[str, set[str]] = {}
    for path in sorted((WEB_DIR / "templates").glob("*.html")):
        text = path.read_text(encoding="utf-8")
        keys = [k for pattern in TEMPLATE_KEYS for k in pattern.findall(text)]
        for attributes in ATTRIBUTE_KEYS.findall(text):
            keys += [pair.split(":", 1)[1] for pair in attributes.split(";") if ":" in pair]
        for key in keys:
            found.setdefault(key, set()).add(path.name)
    for path in sorted((WEB_DIR / "static" / "js").glob("*.js")):
        for key in SCRIPT_KEYS.findall(path.read_text(encoding="utf-8")):
            found.setdefault(key, set()).add(path.name)
    return found


def test_both_languages_have_every_key_with_text(strings: dict[str, dict[str, str]]) -> None:
    assert set(LANGUAGES) == {"vi", "en"} and list(strings) == list(LANGUAGES)
    assert set(strings["vi"]) == set(strings["en"]), set(strings["vi"]) ^ set(strings["en"])
    empty = [
        (lang, k) for lang, table in strings.items() for k, v in table.items() if not v.strip()
    ]
    assert empty == []


def test_both_languages_name_the_same_placeholders(strings: dict[str, dict[str, str]]) -> None:
    differing = {
        key: (text, strings["en"][key])
        for key, text in strings["vi"].items()
        if set(PLACEHOLDER.findall(text)) != set(PLACEHOLDER.findall(strings["en"][key]))
    }
    assert differing == {}


def test_every_key_the_pages_name_is_in_the_catalogues(
    strings: dict[str, dict[str, str]],
) -> None:
    used = used_keys()
    assert len(used) > 200, "the patterns still find the pages' keys"
    missing = {key: sorted(files) for key, files in used.items() if key not in strings["vi"]}
    assert missing == {}
