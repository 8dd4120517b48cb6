"""The progress line of long evaluation loops."""
from selfsup.progress import Steps, clock


def test_clock_reads_as_a_person_writes_time():
    assert [clock(s) for s in (0, 42.4, 65, 3599, 3720)] == ["0s", "42s", "1m05s", "59m59s", "1h02m"]


def test_a_progress_line_gives_the_step_and_the_time_left(capsys, monkeypatch):
    import selfsup.progress as progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    line = Steps("semisup", 40, every=10.0)
    for step in range(1, 41):
        now[0] += 1.0  # a second a step
        line.update(step)
    line.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "semisup: step 10/40, 10s spent, about 30s left"  # at the pace so far
    assert lines[-1] == "semisup: step 40/40, 40s spent, about 0s left" and len(lines) == 4
    quiet = Steps(None, 40)  # no label: silent
    quiet.update(40)
    assert capsys.readouterr().err == ""


def test_each_result_gets_a_line_that_names_its_labels(capsys):
    from selfsup.data import load
    from selfsup.evaluate import few_label_rows
    from selfsup.backbones import BACKBONES

    train, test = load("digits", "train"), load("digits", "test")
    encoder = BACKBONES.get("small_cnn")(in_channels=1, width=4)
    few_label_rows(encoder, train, test, [2], "random", ("knn",), progress=True)
    assert capsys.readouterr().err.startswith("random knn, seed 0, 20 labels (2 per class): ")
