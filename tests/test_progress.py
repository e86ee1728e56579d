"""Progress bars are drawn on a terminal only: a log file or a pipe gets no redrawn bars."""
from scan_fast.data import write_shapes
from scan_fast.simulate import simulate_run


def test_writer_and_simulation_draw_no_bars_when_output_is_not_a_terminal(tmp_path, capsys):
    write_shapes(str(tmp_path / "shapes.beton"), num_samples=32, context_length=16, progress=True)
    simulate_run(4000, 3, 512, 0, progress=True)
    err = capsys.readouterr().err  # captured: not a terminal
    assert "writing" not in err and "epochs" not in err and "it/s" not in err
