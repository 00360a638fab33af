"""Errors raised for bad user input: each message says what was wrong and what to do."""


class VitJaxError(Exception):
    """Base class of the errors the CLI reports as one line instead of a traceback."""


class ConfigError(VitJaxError, ValueError):
    """A config key or value that cannot work."""


class DataError(VitJaxError, ValueError):
    """A dataset that cannot be found, read or prepared."""


class ModelError(VitJaxError, ValueError):
    """A model name, option or input that the model cannot take."""


class TrainingError(VitJaxError, RuntimeError):
    """A run that cannot go on (e.g. a non-finite loss)."""


class WorkdirError(VitJaxError, RuntimeError):
    """A workdir that cannot take the run: in use by another run, unwritable or full."""


class PlanError(VitJaxError, ValueError):
    """A TPU topology that cannot be planned for, or the TPU compiler missing."""


class StorageError(VitJaxError, RuntimeError):
    """A file or object-store location that cannot be reached, read or written."""
