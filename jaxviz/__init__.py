"""jaxviz."""
