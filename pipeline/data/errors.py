"""The data layer's one exception, in a module of its own so light imports can raise it."""


class DataError(ValueError):
    """A data problem; the message names the shard, key or path involved."""
