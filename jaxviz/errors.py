"""The one exception type jaxviz raises for bad user input (the CLI prints it as one line, exit 2)."""


class JaxvizError(Exception):
    """Bad input: a missing or unreadable file, an unknown name, a wrong shape or hash."""


class WeightsError(JaxvizError):
    """A weights file is missing, corrupt, or does not match the expected hash or shapes."""


class ParamShapeError(JaxvizError):
    """A network's parameters do not fit its module on this input: a parameter whose shape depends
    on the input size (a flatten-dense head), or variables of another module."""
