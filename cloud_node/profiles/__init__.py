"""Bundled launch profiles (YAML data only; a package so that the wheel ships them)."""
