"""The CLI's verbs, one module per group, as plain functions; `dream_job.cli` registers them on its app."""
