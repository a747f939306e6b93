"""Small file helpers every stage shares (kept for existing imports; the home is `dream_job.rundir`)."""

from __future__ import annotations

from dream_job.rundir import write_text_atomically

__all__ = ["write_text_atomically"]
