"""Errors whose one-line message tells the user what to do."""


class SelfsupError(Exception):
    """Base for every error selfsup reports to a user; the CLI prints its message on one line."""


class DataError(SelfsupError):
    """A dataset is missing, malformed, or cannot provide what was asked for."""


class ConfigError(SelfsupError):
    """A configuration value, name or budget is invalid."""
