"""The one exception type of the converter: every failure says what was found and what was expected."""


class ConversionError(ValueError):
    """A checkpoint could not be read, recognised or converted. Nothing was written."""


class UnsafeCheckpointError(ConversionError):
    """A pickle asked to import or call something other than plain tensor data; it was not run."""
