"""The host-aware choice of a code path: a failing candidate is never chosen, a forced one is honoured, the cache is
keyed by host and torch version, and the OpenMP wait policy is set before torch loads unless the user chose one."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch
from curve_factories import light_curves
from transformers import AttentionInterface

from astromer_app.hub_layout import write_hub_folder
from astromer_kernels import host
from astromer_train import openmp
from modeling_astromer import AstromerConfig, AstromerForMaskedReconstruction, AstromerModel
from modeling_astromer.host_defaults import CPU_CANDIDATES, choose_attn_implementation
from modeling_astromer.pipeline import load_pipeline


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROMER_CACHE", str(tmp_path))
    monkeypatch.delenv("ASTROMER_HOST_PROBE", raising=False)
    return tmp_path / host.CACHE_FILE


def _runner(seconds: dict[str, float], failing: set[str] = frozenset(), calls: list | None = None):
    def run(candidate: str) -> None:
        if calls is not None:
            calls.append(candidate)
        if candidate in failing:
            raise RuntimeError(f"{candidate} cannot run here")
        time.sleep(seconds[candidate])

    return run


def test_the_fastest_working_candidate_is_chosen(cache):
    selection = host.select_fastest("t", ["slow", "fast"], _runner({"slow": 0.03, "fast": 0.0}), fallback="slow")
    assert selection.choice == "fast"
    assert set(selection.seconds) == {"slow", "fast"} and selection.seconds["fast"] < selection.seconds["slow"]


def test_a_failing_candidate_is_never_chosen_even_if_fastest(cache):
    selection = host.select_fastest("t", ["broken", "sdpa"], _runner({"broken": 0.0, "sdpa": 0.02}, {"broken"}),
                                    fallback="sdpa")
    assert selection.choice == "sdpa"
    assert "broken" in selection.failures and "cannot run here" in selection.failures["broken"]


def test_all_candidates_failing_gives_the_fallback_untried(cache):
    calls = []
    selection = host.select_fastest("t", ["a", "b"], _runner({}, {"a", "b"}, calls), fallback="sdpa")
    assert selection.choice == "sdpa" and "no candidate ran" in selection.reason
    assert "sdpa" not in calls
    assert not cache.exists()


def test_a_forced_choice_is_honoured_without_probing(cache):
    calls = []
    selection = host.select_fastest("t", ["a", "b"], _runner({"a": 0, "b": 0}, calls=calls), fallback="a",
                                    forced="eager")
    assert selection.choice == "eager" and selection.reason == "requested"
    assert calls == [] and not cache.exists()


def test_probe_switched_off_gives_the_fallback(cache, monkeypatch):
    monkeypatch.setenv("ASTROMER_HOST_PROBE", "0")
    calls = []
    assert host.select_fastest("t", ["a"], _runner({"a": 0}, calls=calls), fallback="sdpa").choice == "sdpa"
    assert calls == []


def test_the_cache_is_keyed_by_host_and_torch_version(cache, monkeypatch):
    first = host.select_fastest("embed", ["a", "b"], _runner({"a": 0.02, "b": 0.0}), fallback="a")
    assert first.choice == "b"
    data = json.loads(cache.read_text())
    key = host.host_info().key
    assert data[key]["embed"]["choice"] == "b" and "torch" in data[key]["host"]
    # the same host: the cached choice is checked with one run and reused, not measured again
    calls = []
    again = host.select_fastest("embed", ["a", "b"], _runner({"a": 0.0, "b": 0.02}, calls=calls), fallback="a")
    assert again.choice == "b" and calls == ["b"] and "earlier" in again.reason
    # another torch version (or CPU) is another key: measured afresh
    other = host.HostInfo(host.host_info().cpu_model, host.host_info().flags, host.host_info().logical_cpus,
                          "0.0.0-other")
    assert other.key != key
    monkeypatch.setattr(host, "host_info", lambda: other)
    fresh = host.select_fastest("embed", ["a", "b"], _runner({"a": 0.0, "b": 0.02}), fallback="a")
    assert fresh.choice == "a" and "fastest here" in fresh.reason
    assert set(json.loads(cache.read_text())) == {key, other.key}


def test_a_cached_choice_that_fails_now_is_measured_again(cache):
    host.select_fastest("embed", ["a", "b"], _runner({"a": 0.0, "b": 0.02}), fallback="b")
    selection = host.select_fastest("embed", ["a", "b"], _runner({"a": 0.0, "b": 0.0}, {"a"}), fallback="b")
    assert selection.choice == "b" and "a" in selection.failures


def test_an_unwritable_cache_does_not_stop_the_selection(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ASTROMER_CACHE", str(blocker / "below-a-file"))
    monkeypatch.delenv("ASTROMER_HOST_PROBE", raising=False)
    assert host.select_fastest("t", ["a"], _runner({"a": 0.0}), fallback="b").choice == "a"


def test_host_info_names_cpu_flags_and_torch():
    info = host.host_info()
    assert info.cpu_model and info.logical_cpus >= 1
    assert set(info.flags) <= set(host.BF16_FLAGS)
    line = info.describe()
    assert "amx_bf16" in line and "avx512_bf16" in line and info.torch_version in line


def test_the_astromer_command_lets_openmp_threads_sleep_before_torch_loads():
    """The ``astromer`` console script imports ``astromer_app.cli``: the package import must set the policy first."""
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "ASTROMER_OMP_WAIT_POLICY")}
    code = ("import sys, astromer_app, os; from astromer_train.openmp import openmp_wait_policy; "
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules); print(openmp_wait_policy())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)
    policy, status = out.stdout.strip().splitlines()[-2:]
    assert policy == "PASSIVE True" and status.startswith("OMP_WAIT_POLICY=PASSIVE")


@pytest.fixture
def before_torch(monkeypatch):
    """This process as it is before torch is imported, with no policy chosen."""
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(openmp, "_status", openmp.openmp_wait_policy())
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("ASTROMER_OMP_WAIT_POLICY", raising=False)
    return monkeypatch


def test_passive_is_set_when_nothing_decided(before_torch):
    assert openmp.prefer_passive_openmp_wait().startswith("OMP_WAIT_POLICY=PASSIVE")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_the_users_openmp_policy_wins(before_torch):
    before_torch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert "set by the user" in openmp.prefer_passive_openmp_wait()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_policy_can_be_left_alone(before_torch):
    before_torch.setenv("ASTROMER_OMP_WAIT_POLICY", "0")
    assert "ASTROMER_OMP_WAIT_POLICY=0" in openmp.prefer_passive_openmp_wait()
    assert "OMP_WAIT_POLICY" not in os.environ


def test_nothing_is_set_once_torch_is_loaded(monkeypatch):
    monkeypatch.setattr(openmp, "_status", openmp.openmp_wait_policy())
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("ASTROMER_OMP_WAIT_POLICY", raising=False)
    assert "torch was imported before" in openmp.prefer_passive_openmp_wait()
    assert "OMP_WAIT_POLICY" not in os.environ


# ---------------------------------------------------------------------------------------------- a loaded model
def _small_model():
    config = AstromerConfig.astromer2(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                      intermediate_size=64, window_size=24)
    return AstromerModel(config).eval()


def test_the_model_gets_a_working_implementation_and_says_which(cache, caplog):
    model = _small_model()
    with caplog.at_level(logging.INFO, logger="modeling_astromer.host_defaults"):
        selection = choose_attn_implementation(model, probe_windows=4)
    assert selection.choice in CPU_CANDIDATES and set(selection.seconds) == set(CPU_CANDIDATES)
    assert model.config._attn_implementation == selection.choice
    assert f"Astromer: {selection.choice}" in caplog.text and "amx_bf16" in caplog.text


def test_a_raising_attention_implementation_is_not_chosen(cache, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("blocked attention is broken on this host")

    monkeypatch.setitem(AttentionInterface._global_mapping, "astromer_blocked", broken)
    model = _small_model()
    selection = choose_attn_implementation(model, probe_windows=4)
    assert selection.choice == "sdpa" and model.config._attn_implementation == "sdpa"
    assert "broken on this host" in selection.failures["astromer_blocked"]
    assert json.loads(cache.read_text())[host.host_info().key]  # the working choice is cached


def test_a_forced_implementation_is_set_without_a_probe(cache):
    model = _small_model()
    selection = choose_attn_implementation(model, forced="eager")
    assert selection.choice == "eager" and model.config._attn_implementation == "eager"
    assert not cache.exists()


def test_astromer1_keeps_sdpa():
    config = AstromerConfig.astromer1(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                      intermediate_size=64, window_size=24)
    assert choose_attn_implementation(AstromerModel(config)).choice == "sdpa"


# ---------------------------------------------------------------------------------------------- load_pipeline
@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = AstromerConfig.astromer2(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                      intermediate_size=64)
    return write_hub_folder(AstromerForMaskedReconstruction(config).eval(), tmp_path_factory.mktemp("a2") / "model")


def test_load_pipeline_probes_on_a_cpu_and_says_what_it_picked(cache, small_folder):
    pipe = load_pipeline(small_folder)
    assert pipe.attention_choice.choice == pipe.model.config._attn_implementation
    assert set(pipe.attention_choice.seconds) == set(CPU_CANDIDATES)
    assert len(pipe(light_curves(lengths=(40, 250), seed=1))) == 2


def test_load_pipeline_never_keeps_a_failing_blocked_path(cache, small_folder, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no blocked attention here")

    monkeypatch.setitem(AttentionInterface._global_mapping, "astromer_blocked", broken)
    pipe = load_pipeline(small_folder)
    assert pipe.model.config._attn_implementation == "sdpa" and pipe.attention_choice.choice == "sdpa"
    assert len(pipe(light_curves(lengths=(40, 250), seed=1))) == 2  # and it runs


def test_load_pipeline_honours_a_forced_implementation(cache, small_folder):
    pipe = load_pipeline(small_folder, attn_implementation="eager")
    assert pipe.model.config._attn_implementation == "eager" and pipe.attention_choice.reason == "requested"
    assert not cache.exists()


def test_without_the_probe_the_rule_keeps_the_blocked_path(small_folder, monkeypatch):
    monkeypatch.setenv("ASTROMER_HOST_PROBE", "0")
    pipe = load_pipeline(small_folder)
    assert pipe.model.config._attn_implementation == "astromer_blocked"
    assert "not probed" in pipe.attention_choice.reason
