"""English inflection for persona filters: plural, singular, a/an, and verb agreement.

Everything comes from the `inflect` library (a kept dictionary of irregular nouns and verbs, and
of compounds: "cup of tea" -> "cups of tea"), never from rules written here. Each filter is a pure
function of one bounded string, cached: a persona renders the same few values over and over, and
nothing a persona writes reaches inflect's engine except a short string to inflect.
"""

from __future__ import annotations

from functools import lru_cache

_MAX_INFLECT = 80  # characters: longer text is returned as it is (bounds inflect's regex work)


@lru_cache(maxsize=1)
def _engine():
    import inflect

    engine = inflect.engine()
    engine.classical(all=False)  # everyday English: "operas", not "opera" as the plural of "opus"
    return engine


def _inflectable(text: str) -> bool:
    word = text.rpartition(" ")[2].replace("-", "")
    return 0 < len(text) <= _MAX_INFLECT and word.isascii() and word.isalpha()


@lru_cache(maxsize=4096)
def is_plural(text: str) -> bool:
    """True when `text` reads as a plural noun phrase ("spiders", "long walks"; not "fish")."""
    text = str(text)
    if not _inflectable(text):
        return False
    engine = _engine()
    single = engine.singular_noun(text)
    if not single or single == text or engine.plural_noun(single) != text:
        return False
    # inflect also strips the s of a singular that ends in one (octopus -> "octopu", glass ->
    # "glas"): such a word's own plural adds -es (octopuses, glasses), a plural's adds only -s.
    head = text.partition(" of ")[0]
    return engine.plural_noun(head) != head + "es"


@lru_cache(maxsize=4096)
def plural(text: str) -> str:
    """Plural of a noun phrase: e-reader -> e-readers, cup of tea -> cups of tea, mouse -> mice.
    Already plural (or not English letters): unchanged."""
    text = str(text)
    if not _inflectable(text) or is_plural(text):
        return text
    return _keep_case(text, _engine().plural_noun(text.lower()))


@lru_cache(maxsize=4096)
def singular(text: str) -> str:
    """Singular of a noun phrase: spiders -> spider, cups of tea -> cup of tea, mice -> mouse."""
    text = str(text)
    if not _inflectable(text):
        return text
    return _keep_case(text, _engine().singular_noun(text.lower()) or text.lower())


@lru_cache(maxsize=4096)
def a_an(text: str) -> str:
    """Prefix the right English article: apple -> an apple, unicorn -> a unicorn, hour -> an hour;
    a plural takes none (keys -> keys)."""
    text = str(text)
    if not text[:1].isascii() or not text[:1].isalpha() or len(text) > _MAX_INFLECT:
        return text  # digits or another script: no article rule we can trust
    if is_plural(text):
        return text
    return _engine().a(text)


@lru_cache(maxsize=4096)
def verb(subject: str, form: str) -> str:
    """`form` (a verb as it goes with "it": is, has, does, frightens) agreeing with `subject`:
    `{{ thing }} {{ thing | verb('is') }}` -> "spiders are", "the sea is"."""
    subject, form = str(subject), str(form)
    if len(form) > _MAX_INFLECT or not is_plural(subject):
        return form
    return _keep_case(form, _engine().plural_verb(form.lower()))


def _keep_case(original: str, out: str) -> str:
    if original.isupper() and len(original) > 1:
        return out.upper()
    if original[:1].isupper():
        return out[:1].upper() + out[1:]
    return out
