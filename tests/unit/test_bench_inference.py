"""The inference benchmark's pure helpers: export, the network clock, tables, the 25% guard."""

from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from bench import inference
from bench.inference import (
    Change,
    ExportError,
    FamilyResult,
    NetworkClock,
    Timing,
    build_results,
    changes,
    compare_with_last,
    export_torchscript,
    output_signature,
    parse_families,
    reference_table,
    section_key,
    study_table,
)
from cad_node.domain.findings import ModelIdentity
from cad_node.domain.image_sets import Assessment, AssessmentKind, Laterality, PlanarResult
from cad_node.imaging.image_set_loading import load_image_set
from tests.results_inputs import headers_only
from tests.unit import test_planar_results as planar
from tests.unit.test_results_objects import make_case

MACHINE = {"cpu": "AMD EPYC", "cores": "2", "ram": "23.5 GiB"}


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(x)
        return features.mean(dim=(2, 3)), features


class _NotScriptable(_Tiny):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(x)
        scale = {"a": 1.0}.get  # a bound method: TorchScript cannot compile it
        return features.mean(dim=(2, 3)) * scale("a"), features


def _timing(median: float, network: float | None = None, findings: int = 3) -> Timing:
    return Timing(
        predict_s=(median, median * 1.1, median * 0.9),
        network_s=() if network is None else (network, network, network),
        findings=findings,
        explanations=1,
    )


def _mammo_result(right_breast_score: float) -> PlanarResult:
    assessment = Assessment(
        kind=AssessmentKind.BREAST_SUSPICION,
        laterality=Laterality.RIGHT,
        score=right_breast_score,
        sop_instance_uids=("1.2.3.1", "1.2.3.2"),
        threshold=0.44,
    )
    identity = ModelIdentity("mammo_screening", "0.1.0", "0" * 64, family="mammography")
    return PlanarResult(
        model=identity, study_instance_uid="1.2.3", findings=(), assessments=(assessment,)
    )


def _result(family: str = "fundus", **changes_: Any) -> FamilyResult:
    values: dict[str, Any] = {
        "family": family,
        "model_name": "fundus_dr",
        "study": "OD + OS 512x512 RGB",
        "load_s": 0.03,
        "native": _timing(2.0, network=0.5),
        "build_s": 1.2,
        "objects": 5,
        "peak_rss_bytes": 756_000_000,
        "peak_rss_reset": True,
        "torchscript": _timing(1.0, network=0.4),
        "export_method": "torch.jit.script",
    }
    return FamilyResult(**{**values, **changes_})


def _figures(predict: float, reference: float | None, study: str = "CT 120") -> dict[str, Any]:
    figure: dict[str, Any] = {"study": study, "predict_median_s": predict}
    if reference is not None:
        figure["torchscript_predict_median_s"] = reference
    return {"lung_ct": figure}


def test_export_scripts_a_copy_without_the_python_hooks() -> None:
    net = _Tiny().eval()
    net.conv.register_forward_hook(lambda module, args, output: None)
    x = torch.randn(1, 1, 8, 8)

    scripted, method = export_torchscript(net, None)

    assert method == "torch.jit.script"
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert len(net.conv._forward_hooks) == 1  # the loaded model keeps its Grad-CAM hooks
    assert torch.allclose(scripted(x)[0], net(x)[0])


def test_export_traces_what_cannot_be_scripted_on_the_example_inputs() -> None:
    net = _NotScriptable().eval()
    x = torch.randn(1, 1, 8, 8)

    traced, method = export_torchscript(net, (x,))

    assert method.startswith("torch.jit.trace (script failed:")
    assert torch.allclose(traced(x)[1], net(x)[1])
    with pytest.raises(ExportError, match="no inputs to trace with"):
        export_torchscript(net, None)


def test_network_clock_adds_up_forward_calls_and_keeps_the_first_inputs() -> None:
    clock = NetworkClock(_Tiny().eval(), "cpu")
    first, second = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)

    with torch.inference_mode():
        clock(first)
        clock(second)

    assert clock.seconds > 0.0
    assert clock.example_inputs is not None
    kept = clock.example_inputs[0]
    assert torch.equal(kept, first)
    assert not kept.is_inference()  # tracing can use it outside inference mode


def test_timing_and_ratio() -> None:
    result = _result(native=_timing(2.0, network=0.5), torchscript=_timing(0.8))

    assert result.native.median_s == pytest.approx(2.0)
    assert result.native.min_s == pytest.approx(1.8)
    assert result.native.network_median_s == pytest.approx(0.5)
    assert result.torchscript is not None
    assert result.torchscript.network_median_s is None
    assert result.ratio == pytest.approx(2.5)
    assert _result(torchscript=None).ratio is None


def test_tables_show_the_figures_and_why_a_network_was_not_exported() -> None:
    exported = _result()
    not_exported = _result("mammography", torchscript=None, export_error="script failed: x")

    studies = study_table([exported, not_exported])
    references = reference_table([exported, not_exported])

    assert (
        "| fundus (`fundus_dr`) | OD + OS 512x512 RGB | 0.03 | **2.00** (1.80) | 0.50 |" in studies
    )
    assert "| 3 / 5 | 756 |" in studies
    assert "GPU" not in studies
    assert "| fundus | 2.00 | 1.00 | **2.00** | 0.50 / 0.40 | 1.25 | 3 / 1 vs 3 / 1 |" in references
    assert (
        "| mammography | 2.00 | — | — | — | — | — | not exported: script failed: x |" in references
    )


def test_study_table_adds_gpu_memory_on_cuda_and_marks_an_unreset_peak() -> None:
    table = study_table([_result(peak_gpu_bytes=1_500_000_000, peak_rss_reset=False)])

    assert "Peak GPU memory, MB" in table
    assert "| 756 (process) | 1500 |" in table


def test_figures_keep_what_the_next_run_compares() -> None:
    figure = inference.figures([_result()])["fundus"]

    assert figure["predict_median_s"] == 2.0
    assert figure["torchscript_predict_median_s"] == 1.0
    assert figure["study"] == "OD + OS 512x512 RGB"
    assert "peak_gpu_mb" not in figure


def test_more_than_25_percent_slower_is_a_regression() -> None:
    (change,) = changes(_figures(10.0, 5.0), _figures(13.0, 5.0))

    assert change.slower == pytest.approx(0.3)
    assert change.regressed


def test_slower_with_the_torchscript_reference_is_not_a_regression() -> None:
    (change,) = changes(_figures(10.0, 5.0), _figures(13.0, 6.5))

    assert change.slower_than_reference == pytest.approx(0.0)
    assert not change.regressed


def test_without_a_reference_the_absolute_change_decides() -> None:
    assert Change("fundus", 1.0, 1.3, 0.3, None).regressed
    assert not Change("fundus", 1.0, 1.2, 0.2, None).regressed


def test_another_study_is_not_compared() -> None:
    assert changes(_figures(10.0, 5.0, study="CT 300"), _figures(13.0, 5.0)) == []
    last = {"date": "2026-11-25 19:00 UTC", "figures": _figures(10.0, 5.0, study="CT 300")}

    text, regressed = compare_with_last(last, _figures(30.0, 5.0), {"machine": MACHINE})

    assert "not compared: other studies" in text
    assert not regressed


def test_a_regression_on_another_machine_is_shown_but_not_flagged() -> None:
    last = {"date": "then", "machine": {**MACHINE, "cores": "16"}, "figures": _figures(10, 5)}

    text, regressed = compare_with_last(last, _figures(20.0, 5.0), {"machine": MACHINE})

    assert "**another machine**" in text
    assert "**100% slower**" in text
    assert not regressed
    _, regressed_here = compare_with_last(
        {**last, "machine": MACHINE}, _figures(20, 5), {"machine": MACHINE}
    )
    assert regressed_here


def test_families_and_section_keys() -> None:
    assert parse_families("lung_ct, fundus") == ("lung_ct", "fundus")
    with pytest.raises(SystemExit, match="unknown families"):
        parse_families("lung_ct,knee_mri")
    assert section_key("cpu") == "inference"
    assert section_key("cuda:1") == "inference-cuda"


def test_output_signature_tells_a_changed_score_from_float_noise() -> None:
    first = output_signature(_mammo_result(0.7298))

    assert first == (0.73,)
    assert output_signature(_mammo_result(0.72981)) == first
    assert output_signature(_mammo_result(0.6031)) != first


def test_an_output_that_changed_between_runs_is_marked_in_both_tables() -> None:
    unstable = replace(_timing(1.1), stable=False)
    result = _result("mammography", native=unstable)

    assert "| 3 / 5 (**output changed between runs**) |" in study_table([result])
    assert "3 / 1 (**output changed between runs**) vs 3 / 1 |" in reference_table([result])


def test_results_count_every_object_the_worker_sends_to_a_seg_and_sr_destination() -> None:
    case = make_case()  # three nodules: one SEG, the SR, the KOS
    assert build_results(case.series, case.volume, case.result, "lung_nodule_ct") == 3
    datasets = headers_only(planar._mammo_datasets())
    image_set = load_image_set(planar._mammo_datasets())
    result = planar._mammo_result(image_set)
    # two views with findings: two SEGs; one map: a Parametric Map and its image; SR; KOS
    assert build_results(datasets, image_set, result, "mammo_screening") == 6
    with pytest.raises(ValueError, match="does not match"):
        build_results(datasets, case.volume, result, "mammo_screening")
