"""The one error a scheduling config can raise while it is loaded."""


class ConfigError(ValueError):
    """An EndpointPickerConfig that cannot be built; the message names the field and what is allowed."""
