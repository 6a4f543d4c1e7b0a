"""The option types both command modules use (cli.py, cli_model.py): numbers that refuse what
click's own let through, seeds, ports, counts.
"""

from __future__ import annotations

import math

import click

# click's FloatRange compares with < and >, and every comparison with NaN is false, so
# `--temperature nan` passes it; `inf` passes a range with no upper end. These refuse both, so a
# bad number is one `error:` line at parse time, not a traceback (or a silent wrong run) later.


class FiniteFloat(click.FloatRange):
    """A float in a range, never NaN nor infinity."""

    name = "number"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


def finite(min=None, max=None, min_open=False, max_open=False) -> FiniteFloat:  # noqa: A002
    return FiniteFloat(min, max, min_open=min_open, max_open=max_open)


SEED = click.IntRange(0, 2**32 - 1)  # what every random generator in use accepts as a seed
PORT = click.IntRange(0, 65_535)
COUNT = click.IntRange(min=1)
