"""Audits of uploaded transcripts: ingest, the local and Ray engines, reports."""
