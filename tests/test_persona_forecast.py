"""validate's forecast: dry (ask, say) pairs warned at their lines, and the unique share that
generate then measures, predicted to within 3 points."""

from __future__ import annotations

from pathlib import Path

import pytest

from guppyforge.dataset.draw import draw_unique
from guppyforge.persona.forecast import forecast
from guppyforge.persona.schema import load_persona, validate_persona

DRY = Path(__file__).parent / "fixtures" / "personas" / "quill_dry.yaml"


def test_dry_pairs_are_warned_at_their_lines_with_the_fix():
    report = validate_persona(DRY, 20_000)
    assert not report.errors
    pairs = [w for w in report.warnings if "distinct conversation" in w]
    # help: two fixed questions x two fixed replies, all four pairs make one conversation each:
    # one warning per reply, naming both its asks (one line of the file to fix, not four).
    help_pairs = [w for w in pairs if "topics.help" in w]
    assert len(help_pairs) == 2
    assert all("with 2 asks of topics.help (ask[0], ask[1])" in w for w in help_pairs)
    assert "as few as 1;" in help_pairs[0]
    assert "Add a symbol" in help_pairs[0] and "lower topics.help.weight" in help_pairs[0]
    # greeting's pairs are rich: none of them is warned about.
    assert not [w for w in pairs if "topics.greeting" in w]
    shares = [w for w in report.warnings if "rows predicted" in w]
    assert any("topics.goodbye: about 27 rows predicted for -n 20,000" in w for w in shares)
    assert report.forecast.unique_pct < 60


@pytest.mark.parametrize("n", [20_000])
def test_predicted_unique_share_matches_what_drawing_measures(n):
    persona = load_persona(DRY)
    predicted = forecast(persona, n)
    drawn = draw_unique(DRY, persona, 42, n, persona.turns or ((1, 1.0),), progress=False)
    assert abs(predicted.unique_pct - drawn.unique_pct) <= 3, (
        predicted.unique_pct,
        drawn.unique_pct,
    )
    assert predicted.rows["help"] == 4 and predicted.rows["goodbye"] == 27


def test_a_follow_up_reply_of_fixed_words_in_hundreds_of_rows_is_warned(write_persona_file):
    path = write_persona_file(
        """\
guppyforge: 1.4
name: t
summary: s
turns: {2: 1}
grammar:
  food: [worms, flakes, bugs, shrimp, peas, moss, crumbs, algae]
  how: [ok, fine, good, great, tasty, yum]
topics:
  food:
    ask: ["do you like {{ food }}", "is {{ food }} {{ how }}", "want some {{ food }}"]
    say: ["{{ food }}? yes. {{ how }}.", "{{ food }}. i eat it near the rock."]
    follow_ups:
      - ask: ["why", "how come"]
        say: ["because it is there.", "it tastes of {{ food }}."]
"""
    )
    report = validate_persona(path, 2_000)
    fixed = [w for w in report.warnings if "a follow-up reply with no symbol" in w]
    assert len(fixed) == 1 and "follow_ups[0].say[0]" in fixed[0], report.warnings
    assert "about 1,000 rows of -n 2,000 end with these same words" in fixed[0]
