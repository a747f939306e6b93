"""The cost preflight behind `dream-job estimate`: GPU catalog, memory, time and price models.

Imports no torch and nothing from the container side except `dream_job.spec`, so it runs on a
laptop without torch. The models land with the estimate issue; `tests/unit/test_spec.py`
checks that importing this package pulls in no torch.
"""
