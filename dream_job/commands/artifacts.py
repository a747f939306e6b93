"""Verb `pull`: fetch a published model and verify it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dream_job.commands.failures import guarded


@guarded
def pull(
    source: Annotated[str, typer.Argument(help="`hf://user/repo`, `s3://bucket/prefix` or `file:///path`.")],
    dest: Annotated[Path, typer.Argument(help="Local folder to write the model into.")],
    force: Annotated[bool, typer.Option("--force", help="Replace a destination folder that holds other files.")] = False,
) -> None:
    """Download a finished model, check every file against its manifest and that it is a Dream export.

    Nothing in the destination changes until every file is verified; a folder holding other files
    is refused unless it holds an earlier pull of the same model, or `--force` is given.

    Example: `dream-job pull hf://you/dream-s1k ./dream-s1k`
    """
    from dream_job.artifacts import pull as pull_model
    from dream_job.progress import stderr

    folder = pull_model(source, dest, force=force)
    how = (f"AutoModel.from_pretrained('{folder}', trust_remote_code=True)" if (folder / "modeling_dream.py").exists()
           else f"dream_job.train.export.load_export('{folder}') (it has no Dream remote code)")
    stderr.print(f"pulled and verified {source} into {folder}; load it with {how}", highlight=False, soft_wrap=True)
