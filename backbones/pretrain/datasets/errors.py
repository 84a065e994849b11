"""Errors raised while locating or reading a classification dataset."""


class DatasetError(RuntimeError):
    """A dataset is missing, laid out unexpectedly, or holds a record that cannot be read."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The data root does not hold the dataset; the message states the expected layout and the official source."""
