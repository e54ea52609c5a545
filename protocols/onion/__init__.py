"""Onion routing and `.fog` hidden services (issue 14; DESIGN.md "Onion routing")."""
