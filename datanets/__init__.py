"""Datanets: contributions as content (validated, normalised, split into rows with Kubo-identical CIDs),
duplicate detection (exact + MinHash), weights derived from content under a named tokenizer, content-addressed
version manifests that anyone can verify, and the DatanetRegistry client. Never imports torch (import-linter).

Modules: errors, tokenize, dedup, contribution, manifest, pull (fetch a version through a caller's fetch), registry
(chain). See docs/datanets.md.
"""
