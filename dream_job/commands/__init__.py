"""The CLI's verbs, one module per group; importing this package registers them on `cli.app`."""

# The order here is the order of `dream-job --help`: a newcomer's path from a job file to a model.
from dream_job.commands import estimate, launch, data, train, evaluate, publish, artifacts  # noqa: F401,I001
