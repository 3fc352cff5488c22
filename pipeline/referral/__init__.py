"""Referral events: JSON-lines event logs → cleaned, staged events → hourly referral reports in Postgres.

`load.load_files` is the entry point; `clean` parses and validates lines, `staging` keeps the cleaned
events as day partitions, `report` computes the hourly reports, `stream` updates them chunk by chunk,
`publish` writes them to Postgres and the events to ClickHouse, `generate` writes realistic test files.
"""
