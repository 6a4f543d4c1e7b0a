"""Stage 1: a persona YAML file, safely loaded and checked, and the conversations it makes.

Read in this order: types.py (what a persona is), yamlsafe.py and schema.py (reading one),
grammar.py and templating.py (the engine), conversations.py (sampling), variation.py (the user's
side typed as people type) and offtopic.py (the shipped pool of general prompts), load.py (all
of it together), then capacity.py, starter.py, report.py and cards.py. Never imports torch or click.
"""
