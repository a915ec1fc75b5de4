"""Checkers that judge a run from the outside: histories, linearizability."""
