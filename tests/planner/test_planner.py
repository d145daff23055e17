"""The planner's arithmetic, `asyncvid plan` on a tiny model, and `asyncvid bench`'s report."""

from __future__ import annotations

import json

import pytest

from asyncvid.cli.main import main
from asyncvid.planner.links import LINKS, LinkModel, parse_link
from asyncvid.planner.predict import predict
from asyncvid.errors import AsyncVidError

COSTS = [1.0, 2.0, 3.0, 2.0, 1.0, 1.0]
BYTES = [100, 200, 300, 200, 100, 50]


def test_stage_times_add_up_to_the_profile():
    for n in (1, 2, 3, 4):
        p = predict(COSTS, BYTES, n, overhead_s=0.5, link=LINKS["nvlink"])
        covered = [i for a, b in p.ranges for i in range(a, b)]
        assert covered == list(range(len(COSTS)))  # contiguous, every unit once
        # the units' costs, plus the per-step overhead that the driver's stage carries
        assert sum(p.stage_s) == pytest.approx(sum(COSTS) + 0.5)
        assert p.sequential_step_s == pytest.approx(sum(COSTS) + 0.5)


def test_speedup_arithmetic():
    one = predict(COSTS, BYTES, 1, steps=10, warmup=1)
    assert one.speedup_per_step == pytest.approx(1.0) and one.speedup_per_video == pytest.approx(1.0)
    fast = LinkModel("ideal", 1e30, 0.0)
    two = predict(COSTS, BYTES, 2, steps=10, warmup=1, link=fast)
    assert two.ranges == [(0, 3), (3, 6)] and two.per_step_s == pytest.approx(6.0)
    assert two.speedup_per_step == pytest.approx(10 / 6)
    # a video: 1 sequential step + 9 rounds
    assert two.video_s == pytest.approx(10 + 9 * 6)
    s2 = predict(COSTS, BYTES, 2, stride=2, steps=10, warmup=1, link=fast)
    assert s2.per_step_s == pytest.approx(3.0) and s2.video_s == pytest.approx(10 + 5 * 6)  # ceil(9/2) rounds
    # a slow link shows: transfer longer than the receiving stage's compute
    slow = predict(COSTS, BYTES, 2, steps=10, link=LinkModel("slow", 10.0, 0.0))  # 300 B at 10 B/s = 30 s
    assert slow.exposed_comm_s == pytest.approx(30 - 4.0) and slow.speedup_per_step < two.speedup_per_step


def test_cpu_links_add_transfers_to_the_stages():
    link = LinkModel("cpu", 100.0, 0.5, overlaps_compute=False)  # 300 B = 3 s + 0.5 s latency
    p = predict(COSTS, BYTES, 2, steps=10, link=link, eps_bytes=50)
    # stage 0: 6 s compute + sends the 300 B cut (3.5 s) + receives the 50 B eps (1.0 s); stage 1 the same
    # transfers the other way round; plus one control latency per round
    assert p.round_s == pytest.approx(6 + 3.5 + 1.0 + 0.5)
    assert p.exposed_comm_s == pytest.approx(4.5)


@pytest.mark.multiprocess
def test_cfg_groups_halve_the_units_and_add_the_parts_round_trip():
    fast = LinkModel("ideal", 1e30, 0.0)
    # one stage per group, two groups: each runs half the batch; only rank 0 does the pipeline's work
    c2 = predict(COSTS, BYTES, 1, steps=10, warmup=1, overhead_s=1.0, link=fast, cfg=2)
    assert c2.round_s == pytest.approx(10 / 2 + 1.0) and c2.speedup_per_step == pytest.approx(11 / 6)
    assert c2.video_s == pytest.approx(10 * 6)  # no sequential warm-up with one stage per group
    # measured part costs win over the halving; the parts' round trip costs on a CPU link
    part = [c * 0.6 for c in COSTS]
    cpu = LinkModel("cpu", 100.0, 0.5, overlaps_compute=False)
    p = predict(COSTS, BYTES, 1, steps=10, overhead_s=1.0, link=cpu, cfg=2, part_costs=part, guidance_bytes=100)
    hop = 100 / 100.0 + 2 * 0.5
    assert p.round_s == pytest.approx(max(6.0 + 1.0 + 0.5, 6.0 + hop))  # rank 0 sends 50 B; the other waits out the hop
    # two stages in each of two groups: the group's cuts carry half the batch
    s2 = predict(COSTS, BYTES, 2, steps=10, link=fast, cfg=2, eps_bytes=50)
    assert s2.cut_bytes == [150, 25] and s2.per_step_s == pytest.approx(3.0)


def test_a_shared_host_slows_parallel_rounds_not_warm_up_steps():
    fast = LinkModel("ideal", 1e30, 0.0)
    base = predict(COSTS, BYTES, 2, steps=10, warmup=1, link=fast)
    slow = predict(COSTS, BYTES, 2, steps=10, warmup=1, link=fast, slowdown=1.5)
    assert slow.round_s == pytest.approx(1.5 * base.round_s)
    assert slow.video_s == pytest.approx(base.sequential_step_s + 9 * slow.round_s)  # the warm-up step alone
    one = predict(COSTS, BYTES, 1, steps=10, link=fast, slowdown=1.5)
    assert one.per_step_s == pytest.approx(sum(COSTS))  # one rank: nobody to share with


@pytest.mark.multiprocess
def test_measured_local_link():
    from asyncvid.planner.links import measure_local_link

    link = measure_local_link()
    assert 0 < link.latency_s < 0.1 and link.bytes_per_s > 1e6
    assert link.overlaps_compute is False  # CPU ranks copy on their own cores


def test_links():
    assert parse_link("pcie") is LINKS["pcie"]
    assert parse_link("12.5").bytes_per_s == 12.5e9
    with pytest.raises(AsyncVidError, match="--link"):
        parse_link("carrier-pigeon")
    with pytest.raises(AsyncVidError, match="cannot cut 6 units into 7"):
        predict(COSTS, BYTES, 7)


def test_plan_cli_profiles_saves_and_reads_back(tmp_path, capsys):
    profile, first = tmp_path / "profile.json", tmp_path / "plan.json"
    args = ["plan", "animatediff", "--preset", "tiny", "--size", "16", "--devices", "2", "--stages", "2", "--steps", "10"]
    assert main(args + ["--save-profile", str(profile), "--json", str(first)]) == 0
    text = capsys.readouterr().out
    assert "stage 0:" in text and "stage 1:" in text and "predicted:" in text
    plan = json.loads(first.read_text())
    prof, pred = plan["profile"], plan["prediction"]
    assert len(prof["costs_s"]) == len(prof["units"]) == len(prof["bytes_after_unit"])
    assert sum(pred["stage_s"]) == pytest.approx(sum(prof["costs_s"]) + prof["overhead_s"])
    assert pred["cut_bytes"][0] == prof["bytes_after_unit"][pred["ranges"][0][1] - 1] > 0
    # the saved profile predicts the same without profiling again
    second = tmp_path / "again.json"
    assert main(["plan", "--profile", str(profile), "--devices", "2", "--stages", "2", "--steps", "10",
                 "--json", str(second)]) == 0
    assert json.loads(second.read_text())["prediction"] == pred
    (tmp_path / "bad.json").write_text("{}")
    assert main(["plan", "--profile", str(tmp_path / "bad.json"), "--devices", "2"]) == 2
    err = capsys.readouterr().err
    assert "not an asyncvid profile" in err and len(err.strip().splitlines()) == 1


@pytest.mark.multiprocess
def test_bench_reports_every_configuration(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    configs = ["2x2w2", "1x1c2"]
    assert main(["bench", "--model", "animatediff", "--preset", "null", "--size", "8", "--frames", "2", "--steps", "4",
                 "--repeats", "1", "--no-memory", "--configs", *configs, "--json", str(out), "--markdown", str(md)]) == 0
    report = json.loads(out.read_text())
    assert (report["config"]["size"], report["config"]["latent"]) == (8, 4)  # pixels over the VAE's scale 2
    got = [(r["stages"], r["stride"], r["warmup"], r["cfg"]) for r in report["results"]]
    assert got == [(2, 2, 2, 1), (1, 1, 1, 2)]
    for r in report["results"]:
        assert len(r["peak_rss_mib"]) == r["stages"] * r["cfg"] and all(m > 0 for m in r["peak_rss_mib"])
        assert r["per_step_s"] > 0 and r["predicted"]["speedup_per_step"] > 0 and r["predicted"]["cfg"] == r["cfg"]
        assert (r["activation_bytes_per_step"] > 0) == (r["stages"] > 1)
        assert (r["guidance_bytes_per_step"] > 0) == (r["cfg"] > 1)
    assert report["profile"]["units"] and report["baselines"]["one_thread"]["per_step_s"] > 0
    contention = report["contention"]  # measured once, applied to every multi-rank prediction
    assert len(contention["together_s"]) == 2 and contention["slowdown"] >= 1.0
    # each configuration is compared with the one-thread runs right before and after it
    runs = report["baselines"]["one_thread_runs"]
    assert len(runs) == len(configs) + 1
    for i, r in enumerate(report["results"]):
        assert r["one_thread_reference"]["per_step_s"] == pytest.approx((runs[i]["per_step_s"] + runs[i + 1]["per_step_s"]) / 2)
        assert r["speedup_vs_one_thread"] == pytest.approx(r["one_thread_reference"]["per_step_s"] / r["per_step_s"])
    table = md.read_text()
    assert table.count("\n| N=") == 2 and "| N=2 S=2 warm-up 2 |" in table and "| N=1 S=1 cfg=2 warm-up 1 |" in table


def test_plan_profiles_in_the_requested_dtype(tmp_path, capsys):
    out = tmp_path / "plan.json"
    args = ["plan", "animatediff", "--preset", "null", "--size", "8", "--frames", "2", "--devices", "2",
            "--dtype", "bfloat16", "--json", str(out)]
    assert main(args) == 0
    prof = json.loads(out.read_text())["profile"]
    assert prof["dtype"] == "torch.bfloat16"
    # half the bytes of float32 at every cut: the meta walk sized the states in bfloat16
    assert main(args[:-4] + ["--dtype", "float32", "--json", str(tmp_path / "fp32.json")]) == 0
    fp32 = json.loads((tmp_path / "fp32.json").read_text())["profile"]
    assert [b * 2 for b in prof["bytes_after_unit"]] == fp32["bytes_after_unit"]


def test_device_cuda_without_a_gpu_is_one_line(monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    monkeypatch.setenv("ASYNCVID_DEVICE", "auto")  # restored after the test: the CLI sets it for its ranks
    args = ["plan", "animatediff", "--preset", "null", "--size", "8", "--frames", "2", "--devices", "2"]
    assert main(args + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device is visible" in err


@pytest.mark.multiprocess
@pytest.mark.parametrize("model", ["animatediff", "svd", "wan"])
def test_memory_bench_reports_parameters_and_peaks_per_rank(tmp_path, model):
    """``bench --memory-only``: the full pipeline in one process, then stage-only loading on 2 ranks;
    the ranks together hold every denoiser parameter once, plus the shared modules (and the
    parameters the denoiser holds itself, Wan's head table) a second time."""
    from asyncvid.catalog.pipelines import build_pipeline, denoiser_of
    from asyncvid.models import adapter_for

    out = tmp_path / "memory.json"
    size = ["--frames", "5", "--size", "16"] if model == "wan" else ["--frames", "2", "--size", "8"]
    assert main(["bench", "--model", model, "--preset", "tiny", "--memory-only", *size, "--json", str(out)]) == 0
    mem = json.loads(out.read_text())["memory"]
    full, two = mem["full_pipeline"], mem["stage_only_2"]
    held = two["unet_params_held"]
    assert len(held) == 2 and all(n > 0 for n in held)
    denoiser = denoiser_of(build_pipeline(model, "tiny"))
    names = [n for n, _ in denoiser.named_modules()]
    shared = sum(p.numel() for m in adapter_for(denoiser).shared_modules if m in names  # (SDXL's too)
                 for p in denoiser.get_submodule(m).parameters())
    shared += sum(p.numel() for p in denoiser.parameters(recurse=False))
    assert full["unet_params_held"][0] == sum(p.numel() for p in denoiser.parameters())
    assert sum(held) == full["unet_params_held"][0] + shared
    assert all(p > 0 for p in two["peak_mib"]) and len(two["peak_over_full"]) == 2
    assert two["peak_over_full"] == [round(p / full["peak_mib"][0], 3) for p in two["peak_mib"]]


def saved_profile(tmp_path) -> str:
    """A profile as ``asyncvid plan --save-profile`` writes it, with made-up costs: nothing is timed."""
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({
        "units": [f"u{i}" for i in range(len(COSTS))], "costs_s": COSTS, "bytes_after_unit": BYTES,
        "overhead_s": 0.5, "eps_bytes": 50, "sample_bytes": 50, "part_forward_s": 0.55 * sum(COSTS),
        "shape": {"batch": 2, "frames": 8, "latent": 8}, "unet": "Toy", "device": "cpu", "threads": 1}))
    return str(path)


def fidelity_report(tmp_path) -> str:
    path = tmp_path / "fidelity.json"
    rows = [dict(stages=n, stride=s, warmup=w, metrics=dict(psnr_db=40.0 - 5 * n - 3 * (s - 1) + w))
            for n in (2, 3, 4) for s in (1, 2) for w in (1, 3)]
    path.write_text(json.dumps({"configs": rows}))
    return str(path)


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_plan_ranks_every_layout_of_the_devices(tmp_path, capsys, objective):
    out = tmp_path / "plan.json"
    assert main(["plan", "--profile", saved_profile(tmp_path), "--devices", "4", "--objective", objective,
                 "--fidelity", fidelity_report(tmp_path), "--link", "100", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    layouts = json.loads(out.read_text())["layouts"]
    # every layout fits: replicas fill the devices that one video's stages x cfg leave
    assert all(lay["replicas"] == 4 // (lay["stages"] * lay["cfg"]) for lay in layouts)
    assert {(lay["stages"], lay["cfg"]) for lay in layouts} >= {(1, 1), (2, 1), (4, 1), (1, 2), (2, 2)}
    key = "latency_speedup" if objective == "latency" else "throughput_speedup"
    speeds = [round(lay[key], 2) for lay in layouts]
    assert speeds == sorted(speeds, reverse=True)
    # one-stage layouts are exact; the others carry the measured PSNR of their stages x stride x warm-up
    for lay in layouts:
        expected = float("inf") if lay["stages"] == 1 else 40.0 - 5 * lay["stages"] - 3 * (lay["stride"] - 1) + lay["warmup"]
        assert lay["psnr_db"] == expected
    single = next(lay for lay in layouts if (lay["replicas"], lay["stages"], lay["cfg"]) == (4, 1, 1))
    assert single["throughput_speedup"] == pytest.approx(4.0) and single["latency_speedup"] == pytest.approx(1.0)
    if objective == "latency":  # a video on every device beats one device per video
        assert layouts[0]["stages"] * layouts[0]["cfg"] == 4 and layouts[0]["latency_speedup"] > 2
    assert "picked " in text and "stage 0:" in text


def test_plan_min_psnr_keeps_only_measured_layouts_above_it(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--profile", saved_profile(tmp_path), "--devices", "4", "--fidelity",
                 fidelity_report(tmp_path), "--min-psnr", "32", "--json", str(out)]) == 0
    layouts = json.loads(out.read_text())["layouts"]
    assert layouts and all(lay["psnr_db"] >= 32 for lay in layouts)
    assert main(["plan", "--profile", saved_profile(tmp_path), "--devices", "4", "--min-psnr", "32"]) == 2
    assert "--min-psnr needs --fidelity" in capsys.readouterr().err


def test_each_layout_takes_the_forecast_measured_best_for_it(tmp_path, capsys):
    """A forecast costs no speed, so the planner gives each layout its best measured forecast; the
    PSNR it shows and --min-psnr filters on is that forecast's."""
    path = tmp_path / "fidelity.json"
    rows = [dict(stages=2, stride=1, warmup=1, forecast="none", metrics=dict(psnr_db=30.0)),
            dict(stages=2, stride=1, warmup=1, forecast="linear", metrics=dict(psnr_db=33.0)),
            dict(stages=2, stride=2, warmup=1, forecast="none", metrics=dict(psnr_db=25.0)),
            dict(stages=2, stride=2, warmup=1, forecast="quadratic", metrics=dict(psnr_db=24.0)),
            dict(stages=4, stride=1, warmup=1, metrics=dict(psnr_db=20.0))]  # a report before forecasts
    path.write_text(json.dumps({"configs": rows}))
    out = tmp_path / "plan.json"
    assert main(["plan", "--profile", saved_profile(tmp_path), "--devices", "4", "--fidelity", str(path),
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    layouts = {(lay["stages"], lay["stride"], lay["warmup"], lay["cfg"]): lay for lay in json.loads(out.read_text())["layouts"]}
    assert (layouts[(2, 1, 1, 1)]["forecast"], layouts[(2, 1, 1, 1)]["psnr_db"]) == ("linear", 33.0)
    assert (layouts[(2, 2, 1, 1)]["forecast"], layouts[(2, 2, 1, 1)]["psnr_db"]) == ("none", 25.0)  # worse: not taken
    assert (layouts[(4, 1, 1, 1)]["forecast"], layouts[(4, 1, 1, 1)]["psnr_db"]) == ("none", 20.0)
    assert "forecast linear" in text
    assert main(["plan", "--profile", saved_profile(tmp_path), "--devices", "4", "--fidelity", str(path),
                 "--min-psnr", "32", "--json", str(out)]) == 0
    kept = json.loads(out.read_text())["layouts"]
    assert {(lay["stages"], lay["forecast"]) for lay in kept if lay["stages"] > 1} == {(2, "linear")}


def test_unmeasured_layouts_rank_after_measured_ones():
    from asyncvid.planner.layouts import enumerate_layouts, rank_layouts

    prof = {"units": [f"u{i}" for i in range(len(COSTS))], "costs_s": COSTS, "bytes_after_unit": BYTES,
            "overhead_s": 0.5, "eps_bytes": 50, "shape": {"batch": 2}}
    fast = LinkModel("ideal", 1e30, 0.0)
    only_two = {(2, 1, 1): ("none", 30.0)}  # one multi-stage configuration measured
    ranked = rank_layouts(enumerate_layouts(prof, 4, 10, fast, only_two), "latency")
    measured = [lay.psnr_db is not None for lay in ranked]
    assert measured == sorted(measured, reverse=True)  # every measured (or exact) layout first
    assert ranked[0].psnr_db is not None
    without = rank_layouts(enumerate_layouts(prof, 4, 10, fast), "latency")
    assert without[0].psnr_db is None and without[0].stages > 1  # nothing measured: speed alone decides


def test_a_wan_profile_counts_latent_frames_tokens_and_two_calls_per_step():
    """Bench and plan on a Wan preset: video frames become latent frames (4x in time, 4k+1), a step's
    two calls (prompt, negative prompt) are profiled as a batch of 2, a cut carries the tokens."""
    from asyncvid.catalog.pipelines import build_pipeline, call_kwargs, profile_shape
    from asyncvid.planner.report import profile_pipeline

    pipe = build_pipeline("wan", "tiny")
    kwargs = call_kwargs(pipe, frames=8, latent=4, steps=2)
    assert (kwargs["num_frames"], kwargs["height"], kwargs["guidance_scale"] > 1) == (9, 32, True)
    assert profile_shape(pipe, 8, 4, groups=2) == dict(frames=3, height=4, width=4, batch=1)
    prof = profile_pipeline(pipe, 8, 4)
    assert prof["unet"] == "WanTransformer3DModel" and prof["shape"]["batch"] == 2
    assert prof["units"] == ["patch_embedding", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "proj_out"]
    width = pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim
    assert prof["bytes_after_unit"][:-1] == [2 * 3 * 2 * 2 * width * 4] * 5  # batch x frames x 2x2 patches x width
    assert prof["overhead_s"] > 0  # the pipeline's own step, timed with the transformer answering zeros


def test_two_calls_per_step_pay_the_link_latency_twice():
    """The same bytes per step in twice the messages (Wan's prompt and negative-prompt calls)."""
    from asyncvid.planner.links import LinkModel
    from asyncvid.planner.report import predict_from

    profile = {"costs_s": [0.01] * 6, "bytes_after_unit": [1000] * 6, "overhead_s": 0.001, "eps_bytes": 1000,
               "shape": {"batch": 2}}
    slow = LinkModel("slow", 1e9, 0.002)
    one = predict_from(profile, 2, link=slow)
    two = predict_from(dict(profile, calls_per_step=2), 2, link=slow)
    # a round: the slowest stage + its exposed transfer + one control latency, each latency now twice
    assert two.round_s - one.round_s == pytest.approx(slow.latency_s, rel=1e-6)
    assert two.stage_s == one.stage_s and two.cut_bytes == one.cut_bytes


def test_plan_says_how_each_layout_speed_is_known(tmp_path, capsys):
    sim = tmp_path / "sim.json"
    sim.write_text(json.dumps({"simulated": True, "results": [
        dict(step_ms=50.0, stages=2, stride=1, warmup=1, cfg=1, speedup=1.7),
        dict(step_ms=200.0, stages=2, stride=1, warmup=1, cfg=1, speedup=1.9)]}))
    real = tmp_path / "real.json"
    real.write_text(json.dumps({"results": [dict(stages=2, stride=2, warmup=1, cfg=1,
                                                  end_to_end_speedup_vs_one_thread=2.5)]}))
    out = tmp_path / "plan.json"
    assert main(["plan", "--profile", saved_profile(tmp_path), "--devices", "2", "--bench", str(sim), str(real),
                 "--json", str(out)]) == 0
    how = {(lay["stages"], lay["stride"], lay["warmup"], lay["cfg"]): lay["how_measured"]
           for lay in json.loads(out.read_text())["layouts"]}
    assert how[(2, 1, 1, 1)] == "simulated 1.70x"  # the report's first step cost
    assert how[(2, 2, 1, 1)] == "measured 2.50x"
    assert how[(2, 1, 3, 1)] == "predicted only"
    assert "speed known from" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text(json.dumps({"results": [{"stages": 2}]}))
    assert main(["plan", "--profile", saved_profile(tmp_path), "--devices", "2", "--bench",
                 str(tmp_path / "bad.json")]) != 0
