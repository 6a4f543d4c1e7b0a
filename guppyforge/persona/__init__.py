"""Stage 1: a persona YAML file, safely loaded and checked, and the conversations it makes.

Read in this order:

    types.py          what a loaded persona is: typed, frozen objects
    bounds.py         the hard bounds on what a persona file may ask of us
    yamlsafe.py       reading a stranger's YAML: plain data, bounded cost, line:column per key
    schema.py         the format: a parsed file walked into a Persona; `load_persona`
    chat_rows.py      chat rows in the usual formats as turns; a persona's examples_file
    grammar.py        named symbols with weighted alternatives, expanded by a shuffle bag
    templating.py     the Jinja2 sandbox, the inflection filters, the plain-text fast path
    conversations.py  sampling rows: the pairing rule, the sampler, the off-topic rows
    variation.py      the user's side typed the way people type
    checks.py         what `validate` checks by making text, and its lints
    forecast.py       capacity counted by enumeration, and what `generate -n N` will do
    starter.py        `new-persona`: a commented starter, or a renamed copy

Never imports torch or click.
"""
