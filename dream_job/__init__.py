"""dream-job: fine-tune the diffusion LM Dream 7B on s1K-1.1 as a cloud batch job.

Imports no torch (the laptop CLI starts fast); see `architecture.md` for the module map.
"""

__version__ = "0.1.0"
