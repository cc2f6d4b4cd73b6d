"""The trainer's own error."""


class TrainingError(RuntimeError):
    """The run stopped on purpose: the message says why and what to change."""
