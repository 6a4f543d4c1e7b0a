"""Hard bounds on what a persona file may ask of us.

Persona files come from strangers, so every cost a file can drive (parsing, expansion, rendering)
is capped here, in one place the docs can quote. A file past a limit is refused with one line.
"""

from __future__ import annotations

SPEC_VERSION = "1.4"  # the newest persona format this code reads
SPEC_VERSIONS = {
    "1": (1, 0),
    "1.0": (1, 0),
    "1.1": (1, 1),
    "1.2": (1, 2),
    "1.3": (1, 3),
    "1.4": (1, 4),
}  # `guppyforge:` values as written

MAX_FILE_BYTES = 1 << 20  # 1 MiB: far above any hand-written persona
MAX_YAML_DEPTH = 20  # nested mappings/lists
MAX_YAML_ALIASES = 100  # `*ref` uses
MAX_YAML_NODES = 100_000  # nodes after aliases are expanded: stops "billion laughs"

MAX_SYMBOLS = 2_000
MAX_ALTERNATIVES = 5_000  # per symbol
MAX_GRAMMAR_DEPTH = 12  # nested symbol references in one expansion
MAX_GRAMMAR_WORK = 2_000  # symbol expansions per conversation
# The most expansions one message can take (each symbol's costliest alternatives, recursion cut
# at the depth limit). This is what bounds generation time: an expansion costs ~3 us, so a
# persona at this limit generates 60K rows in a few times a built-in persona's time.
MAX_MESSAGE_WORK = 16
MAX_MESSAGE_CHARS = 2_000  # one rendered message (and one expanded symbol value)
MAX_TEMPLATE_NESTING = 12  # brackets inside brackets, {% if %} inside {% if %}, in one template
MAX_TAG_TOKENS = 100  # tokens in one {{ }} or {% %}: bounds chains like `not not not ... x`

# 1.3's examples_file: hand-written rows, not a training set (train reads those directly)
MAX_EXAMPLES_FILE_BYTES = 4 << 20  # 4 MiB
MAX_EXAMPLES_FILE_ROWS = 20_000
MAX_ROW_ERRORS = 20  # bad rows of an examples_file named one line each; the rest are counted

MAX_CARD_DEPTH = 64  # nested lists/objects in a Character Card's JSON

MAX_NEVER_SAY_REDRAWS = 20  # attempts to draw a reply free of never_say phrases
MAX_TURNS = 16  # user turns in one generated conversation
MAX_OFFTOPIC_SHARE = 0.5  # off-topic rows per conversation: the character's topics stay the core
MAX_TURN_REDRAWS = 8  # attempts to draw a later turn that repeats no line of the conversation
