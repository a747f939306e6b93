"""The CLI's verbs, one module per group; importing this package registers them on `cli.app`."""

from dream_job.commands import artifacts, data, estimate, evaluate, launch, train  # noqa: F401
