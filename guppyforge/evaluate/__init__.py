"""Stage 5: how well a trained character stays in character, and where its replies came from.

Files, in reading order: score.py (the probes eval asks and how replies are judged, then
`evaluate_run` and its report); trace.py (`why`: the trace index of a run's training data and
the persona lines that taught a reply).
"""
