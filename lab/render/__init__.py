"""Rendering: jinja2 templates (StrictUndefined) to the lab's files and the run's plan; pure."""
