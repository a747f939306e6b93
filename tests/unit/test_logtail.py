"""`dream_job.logtail.follow_lines`: `tail -f` of a run's log until the run ends."""

from __future__ import annotations

from pathlib import Path

from dream_job.logtail import follow_lines


def test_follow_yields_appended_lines_and_holds_a_torn_line_until_it_ends(tmp_path: Path) -> None:
    log = tmp_path / "train.log"  # does not exist yet: the run has not reached training
    writes = iter(["step 1 loss 2.3\nstep 2 lo", "ss 2.2\n", "", "step 3 loss 2.1"])
    state = {"running": True}

    def sleep(_: float) -> None:
        chunk = next(writes, None)
        if chunk is None:
            state["running"] = False  # the run ended, its last line without a newline
            return
        with log.open("a") as handle:
            handle.write(chunk)

    lines = list(follow_lines(log, follow=True, is_running=lambda: state["running"], sleep=sleep))
    assert lines == ["step 1 loss 2.3", "step 2 loss 2.2", "step 3 loss 2.1"]


def test_no_follow_prints_what_is_there(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("a\nb\n")
    assert list(follow_lines(log, follow=False, is_running=lambda: True)) == ["a", "b"]


def test_a_log_rewritten_shorter_is_followed_from_its_new_end(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("step 1\nstep 2\nstep 3\n")
    rewrites = iter([lambda: log.write_text("step 1\n"), lambda: log.write_text("step 1\nstep 2b\n")])
    state = {"running": True}

    def sleep(_: float) -> None:
        action = next(rewrites, None)
        if action is None:
            state["running"] = False
        else:
            action()

    lines = list(follow_lines(log, follow=True, is_running=lambda: state["running"], sleep=sleep))
    # A resumed run dropped steps 2 and 3 (shown already) and logged step 2 again.
    assert lines == ["step 1", "step 2", "step 3", "step 2b"]
