"""ftcompile: compile a fine-tuning recipe into a plan, then run it."""

__version__ = "0.1.0"
