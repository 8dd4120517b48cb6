"""Errors whose one-line message tells the user what to do."""


class SelfsupError(Exception):
    """Base for every error selfsup reports to a user; the CLI prints its message on one line."""


class DataError(SelfsupError):
    """A dataset is missing, malformed, or cannot provide what was asked for."""


class ConfigError(SelfsupError):
    """A configuration value, name or budget is invalid."""


class TrainingError(SelfsupError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


class Interrupted(SelfsupError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
