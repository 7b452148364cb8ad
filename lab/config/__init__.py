"""Configuration, pure data and its validation: settings, targets, scenarios."""
