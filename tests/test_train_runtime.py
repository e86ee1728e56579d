"""The CPU trainer flushes denormals (AdamW's tiny second moments otherwise stall every step)."""
import pytest
import torch


@pytest.fixture
def restore_denormals():
    yield
    torch.set_flush_denormal(False)


def test_setup_runtime_flushes_denormals_on_cpu(restore_denormals):
    from scan_fast.train.runtime import setup_runtime

    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # below fp32's smallest normal (1.18e-38)
    assert (tiny * 0.5).item() != 0.0  # denormals kept by default
    setup_runtime("cpu")
    assert (tiny * 0.5).item() == 0.0
    # and in the intra-op threads of a parallel op started afterwards
    big = torch.full((1 << 20,), 1e-39) * 0.5
    assert int((big != 0).sum()) == 0


def test_main_job_flushes_before_building_data(monkeypatch, tmp_path, restore_denormals):
    from scan_fast.demo import main_job

    seen = {}

    def fake_build(out, num_samples, test_samples, progress=True, data="shapes"):
        seen["flushed"] = (torch.tensor([1e-39]) * 0.5).item() == 0.0
        raise RuntimeError("stop here")

    torch.set_flush_denormal(False)
    monkeypatch.setattr(main_job, "build_data", fake_build)
    with pytest.raises(RuntimeError, match="stop here"):
        main_job.run_main_job(main_job.MainJobConfig(out=str(tmp_path), strategies=("none",)))
    assert seen["flushed"]
