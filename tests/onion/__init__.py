"""Tests of the onion role (issue 14)."""
