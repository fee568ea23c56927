"""Fuzzing the two parsers that read untrusted text: the job spec and the event decoder.

Whatever JSON arrives, JobSpec.from_json / from_dict / rules_from_json raise only ConfigError
(a UserError) and events.decode raises only EventDecodeError; whatever they accept survives a
round trip unchanged. These extend the smaller fuzz tests in test_config.py / test_events.py
with nested, well-shaped but wrongly-typed documents, which reach the field validators.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtapp.engine import events as ev
from qtapp.engine.config import (
    AWQOptions,
    CalibrationSpec,
    ConfigError,
    GGUFOptions,
    GPTQOptions,
    JobSpec,
    ModuleRule,
    QuantScheme,
    rules_from_json,
)

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from([4, 8, 128, -1, 0, 0.01, "gptq", "gguf", "Q4_K_M", "auto",
                              "builtin", "*.mlp.*", "demo", "cpu", True]))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=12)


def fields_of(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def doc_of(cls: type, depth: int = 0) -> st.SearchStrategy:
    """Objects with (mostly) the right field names and arbitrary values, nested like the spec."""
    nested = {"scheme": QuantScheme, "gptq": GPTQOptions, "awq": AWQOptions,
              "gguf": GGUFOptions, "calibration": CalibrationSpec}
    values = {}
    for name in fields_of(cls):
        if name in nested and depth < 2:
            values[name] = doc_of(nested[name], depth + 1) | json_values
        elif name == "rules" and depth < 2:
            values[name] = st.lists(doc_of(ModuleRule, depth + 1), max_size=3) | json_values
        else:
            values[name] = json_values
    return st.fixed_dictionaries({}, optional={**values, "unknown": json_values})


def valid_jobs() -> st.SearchStrategy:
    scheme = st.builds(QuantScheme, bits=st.sampled_from([2, 3, 4, 8]),
                       group_size=st.sampled_from([-1, 0, 32, 128]), sym=st.booleans())
    rule = st.builds(ModuleRule, pattern=st.sampled_from(["*.mlp.*", "*.self_attn.q_proj"]),
                     scheme=scheme)
    return st.builds(
        JobSpec, model=st.text(min_size=1, max_size=20).filter(str.strip),
        method=st.sampled_from(["rtn", "gptq", "awq", "gguf"]),
        out=st.text(min_size=1, max_size=20).filter(str.strip), scheme=scheme,
        rules=st.lists(rule, max_size=3).map(tuple),
        calibration=st.builds(CalibrationSpec, samples=st.integers(1, 100_000),
                              seq_len=st.integers(16, 32768), seed=st.integers(-9, 9)),
        allow_pickle=st.booleans(), trust_remote_code=st.booleans(), overwrite=st.booleans())


@SETTINGS
@given(doc_of(JobSpec) | json_values)
def test_job_spec_from_dict_raises_only_config_errors(data):
    try:
        job = JobSpec.from_dict(data)
    except ConfigError as e:
        assert str(e) and e.path.startswith("job")
        return
    assert JobSpec.from_json(job.to_json()) == job


@SETTINGS
@given(doc_of(JobSpec))
def test_job_spec_text_with_json_extensions(data):
    """NaN/Infinity and huge numbers are JSON that Python's parser accepts."""
    text = json.dumps(data, allow_nan=True)
    try:
        job = JobSpec.from_json(text)
    except ConfigError:
        return
    assert json.loads(job.to_json(), parse_constant=lambda c: float(c)) == job.to_dict()


@SETTINGS
@given(valid_jobs())
def test_valid_jobs_round_trip_through_json(job):
    job = job.validate()
    assert JobSpec.from_json(job.to_json()) == job
    assert JobSpec.from_dict(json.loads(job.to_json())) == job


@SETTINGS
@given(st.lists(doc_of(ModuleRule), max_size=4) | json_values)
def test_rules_file_raises_only_config_errors(data):
    try:
        rules = rules_from_json(json.dumps(data), "rules.json")
    except ConfigError as e:
        assert e.path.startswith("rules.json")
        return
    assert all(isinstance(r, ModuleRule) for r in rules)
    again = rules_from_json(json.dumps([dataclasses.asdict(r) for r in rules]), "rules.json")
    assert again == rules


@SETTINGS
@given(st.text(max_size=60).map(lambda t: '{"model": "demo", "method": "rtn", "out": "o", '
                                + t))
def test_truncated_and_garbled_job_text(text):
    try:
        job = JobSpec.from_json(text)
    except ConfigError:
        return
    assert JobSpec.from_json(job.to_json()) == job


def test_deeply_nested_job_is_a_config_error():
    text = '{"scheme": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(ConfigError, match="nested too deeply") as e:
        JobSpec.from_json(text)
    assert e.value.path == "job"


def event_doc(cls: type[ev.Event]) -> st.SearchStrategy:
    values = {name: json_values for name in fields_of(cls)}
    return st.fixed_dictionaries({"v": st.sampled_from([1, 1, 1, 2, "1", None]),
                                  "type": st.just(cls.type) | json_values},
                                 optional={**values, "extra": json_values})


@SETTINGS
@given(st.sampled_from(list(ev.EVENT_TYPES.values())).flatmap(event_doc))
def test_event_decoder_raises_only_decode_errors(body):
    line = json.dumps(body, allow_nan=True)
    try:
        event = ev.decode(line)
    except ev.EventDecodeError:
        return
    assert event.type in ev.FINAL_TYPES | set(ev.EVENT_TYPES)
    _assert_round_trip(event)


def _assert_round_trip(event: ev.Event) -> None:
    """An accepted event encodes and decodes to itself, unless it holds NaN or Infinity from
    the input, which encode refuses to write (and only then)."""
    try:
        line = ev.encode(event)
    except ValueError:
        assert _has_non_finite(dataclasses.astuple(event))
        return
    assert ev.decode(line) == event


def _has_non_finite(value) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False


@SETTINGS
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: '{"v": 1, "type": ' + t))
def test_event_decoder_on_raw_bytes_and_truncated_lines(line):
    try:
        event = ev.decode(line)
    except ev.EventDecodeError:
        return
    _assert_round_trip(event)


def test_deeply_nested_event_is_a_decode_error():
    line = '{"v": 1, "type": "log", "level": "info", "message": ' + "[" * 100_000 + "]" * 100_000
    with pytest.raises(ev.EventDecodeError, match="not JSON|log.message"):
        ev.decode(line + "}")
