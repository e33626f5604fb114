"""Policy model (frozen dataclasses), YAML loader with path-precise errors, and rule evaluation."""
