import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtapp.engine import events as ev

SAMPLES = [
    ev.Started(model="m", method="gptq", out="/o", total_steps=30, job={"a": 1}),
    ev.Progress(step=3, total=30, stage="quantize", message="block 3/30", eta_s=12.5),
    ev.Progress(step=0, total=30, stage="calibration"),
    ev.Layer(block=2, module="model.layers.2.mlp.up_proj", kind="up", bits=4, group_size=64,
             rel_error=0.0123, seconds=0.5, method="gptq"),
    ev.Log(level="info", message="héllo 你好"),
    ev.Artifact(path="/o/model.safetensors", kind="safetensors", bytes=123),
    ev.Result(out="/o", seconds=3.5, summary={"ppl": 12.5, "files": ["a"]}),
    ev.Failed(message="bad", kind="internal", detail="Traceback"),
    ev.Cancelled(),
    ev.Plan(plan={"model": "m", "peak_ram": 2**30, "seconds": 12.5, "probed": True,
                  "problems": [], "fits": True}),
]


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.type)
def test_round_trip(event):
    line = ev.encode(event)
    assert "\n" not in line
    assert ev.decode(line) == event
    assert ev.decode(line.encode()) == event


def test_schema_version_and_type_are_checked():
    with pytest.raises(ev.EventDecodeError, match="schema version"):
        ev.decode('{"v": 99, "type": "log", "level": "info", "message": "x"}')
    with pytest.raises(ev.EventDecodeError, match="unknown event type"):
        ev.decode('{"v": 1, "type": "nope"}')
    with pytest.raises(ev.EventDecodeError, match="lacks 'message'"):
        ev.decode('{"v": 1, "type": "log", "level": "info"}')
    with pytest.raises(ev.EventDecodeError, match="rel_error"):
        ev.decode('{"v": 1, "type": "layer", "block": 1, "module": "m", "kind": "q", "bits": 4,'
                  ' "group_size": 64, "rel_error": "big", "seconds": 1}')
    with pytest.raises(ev.EventDecodeError, match="plan.plan"):
        ev.decode('{"v": 1, "type": "plan", "plan": ["not", "a", "dict"]}')
    with pytest.raises(ev.EventDecodeError, match="lacks 'plan'"):
        ev.decode('{"v": 1, "type": "plan"}')
    # the unversioned lines `worker --plan` wrote before the plan became an event
    with pytest.raises(ev.EventDecodeError, match="schema version None"):
        ev.decode('{"plan": {"model": "m"}}')
    with pytest.raises(ev.EventDecodeError, match="schema version None"):
        ev.decode('{"error": "the model folder does not exist"}')
    with pytest.raises(ev.EventDecodeError, match="not JSON"):
        ev.decode("progress 3/30")
    with pytest.raises(ev.EventDecodeError, match="not UTF-8"):
        ev.decode(b"\xff\xfe")


def test_nan_is_never_written():
    with pytest.raises(ValueError):
        ev.encode(ev.Layer(block=0, module="m", kind="q", bits=4, group_size=64,
                           rel_error=float("nan"), seconds=0))


def test_module_kind():
    assert ev.module_kind("model.layers.3.self_attn.q_proj") == "q"
    assert ev.module_kind("model.layers.3.mlp.down_proj") == "down"
    assert ev.module_kind("x.custom") == "custom"


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_fuzz_decoder_raises_only_decode_errors(line):
    try:
        ev.decode(line)
    except ev.EventDecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "type", "step", "total", "stage", "message", "level",
                                        "block", "module", "bits", "t", "summary", "out"]),
                       st.one_of(st.integers(), st.text(max_size=10), st.none(),
                                 st.sampled_from([1, "log", "progress", "result", "layer"])),
                       max_size=8))
def test_fuzz_decoder_structured(body):
    import json
    try:
        e = ev.decode(json.dumps(body))
    except ev.EventDecodeError:
        return
    assert e.type in ev.EVENT_TYPES
