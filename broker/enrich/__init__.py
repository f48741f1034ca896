"""Enrichment: localizations, catalog cross-match, event groups and cross-messenger coincidences (issue 9)."""
