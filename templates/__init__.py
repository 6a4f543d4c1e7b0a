"""Jinja2 templates (cards, the starter persona), shipped as `guppyforge.templates`."""
