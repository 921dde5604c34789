"""Errors raised for bad input data; messages always name the file and what was expected."""


class DataError(ValueError):
    """A dataset file is missing, malformed or inconsistent with its neighbours."""
