"""The simulated loss stream and the demo, end to end on a small population."""
import csv

import numpy as np
import pytest

from scan_fast.schedule import ScanReference
from scan_fast.simulate import ILL, REDUNDANT, SimulatedLosses, run_demo, simulate_run

_DEMO = dict(num_samples=3000, epochs=10, batch_size=256, seed=1)


def test_population_is_seeded_and_shaped_as_described():
    population = SimulatedLosses(20_000, seed=3)
    again = SimulatedLosses(20_000, seed=3)
    assert np.array_equal(population.kind, again.kind)
    assert all(np.array_equal(x, y) for x, y in zip(population.epoch_losses(4), again.epoch_losses(4)))
    assert abs(population.ill_ids.size / 20_000 - 0.2) < 0.02
    first, later = population.mean_loss(0), population.mean_loss(8)
    ill, easy = population.kind == ILL, population.kind == REDUNDANT
    assert later[ill].mean() > 0.9 * first[ill].mean()       # ill-matched loss stays high
    assert later[easy].mean() < 0.1 * first[easy].mean()     # redundant loss falls fast
    assert later[ill].min() > later[~ill].max()
    with pytest.raises(ValueError, match="ill_fraction=0.7, redundant_fraction=0.5"):
        SimulatedLosses(10, ill_fraction=0.7, redundant_fraction=0.5)


def test_warmup_ends_after_a_few_epochs_and_finds_the_ill_matched():
    result = simulate_run(**_DEMO, schedule_type=ScanReference)
    phases = [r.phase for r in result.scan.stats().records]
    assert phases[:4] == ["warmup"] * 3 + ["preparation"]
    assert result.recall > 0.95 and result.precision > 0.5  # ILL takes 35% per batch, 20% are ill-matched
    assert 0.25 < result.scan.stats().pruned_fraction < 0.4


def test_run_demo_writes_consistent_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_demo(out=str(out), **_DEMO) == 0
    stats = simulate_run(**_DEMO).scan.stats()
    assert sorted(p.name for p in out.iterdir()) == ["kept_fraction.png", "schedule.csv", "schedule.md"]

    with open(out / "schedule.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["epoch", "phase", "candidates", "pruned", "kept", "loss"]
    assert len(rows) - 1 == len(stats.records) == _DEMO["epochs"]
    for row, record in zip(rows[1:], stats.records):
        assert [int(row[0]), row[1], int(row[2]), int(row[3]), int(row[4])] == \
            [record.epoch, record.phase, record.candidates, record.pruned, record.kept]
        assert float(row[5]) == pytest.approx(record.loss)
    assert sum(int(row[3]) for row in rows[1:]) == stats.sample_steps_saved > 0

    printed = capsys.readouterr().out
    assert stats.format() in printed
    assert f"sample-steps saved: {stats.sample_steps_saved}" in printed
    markdown = (out / "schedule.md").read_text()
    assert markdown.startswith(stats.format(markdown=True))
    assert "precision" in markdown and "recall" in markdown
    assert (out / "kept_fraction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
