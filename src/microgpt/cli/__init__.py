"""Thin command-line front end: each command builds a config and calls one library function."""
