import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtapp.engine.config import (
    ConfigError,
    GPTQOptions,
    JobSpec,
    ModuleRule,
    QuantScheme,
    preset_rules,
    rules_from_json,
)


def job(**kw):
    base = {"model": "demo", "method": "gptq", "out": "/tmp/x"}
    base.update(kw)
    return JobSpec(**base)


def test_round_trip_keeps_every_field():
    j = job(scheme=QuantScheme(3, 64, False), rules=preset_rules("attn8-ffn4", QuantScheme()),
            gptq=GPTQOptions(percdamp=0.05, act_order=True, static_groups=True))
    assert JobSpec.from_json(j.to_json()) == j


@pytest.mark.parametrize("field,value,path,allowed", [
    ("bits", 9, "job.scheme.bits", "2, 3, 4, 5, 6, 7, 8"),
    ("bits", 1, "job.scheme.bits", "2, 3"),
    ("group_size", 7, "job.scheme.group_size", "16, 32, 64, 128"),
    ("sym", "yes", "job.scheme.sym", "true or false"),
])
def test_invalid_scheme_names_field_and_allowed_values(field, value, path, allowed):
    data = job().to_dict()
    data["scheme"][field] = value
    with pytest.raises(ConfigError) as e:
        JobSpec.from_dict(data)
    assert e.value.path == path
    assert allowed in str(e.value)


def test_bits3_group7_is_refused():
    with pytest.raises(ConfigError, match="group_size: 7 is not allowed"):
        QuantScheme(bits=3, group_size=7).validate()


def test_unknown_method_and_unknown_key():
    with pytest.raises(ConfigError, match="job.method: 'foo' is not allowed; choose one of rtn"):
        JobSpec.from_dict({"model": "demo", "method": "foo", "out": "o"})
    with pytest.raises(ConfigError, match="job.sceme: is not a known field"):
        JobSpec.from_dict({"model": "demo", "method": "rtn", "out": "o", "sceme": {}})
    with pytest.raises(ConfigError, match="job.out: is required"):
        JobSpec.from_dict({"model": "demo", "method": "rtn"})


def test_rules_last_match_wins_and_skip():
    rules = (ModuleRule("*.self_attn.*", QuantScheme(8, 128)),
             ModuleRule("*.self_attn.o_proj", skip=True),
             ModuleRule("*.mlp.*", QuantScheme(3, 64, False)))
    j = job(rules=rules)
    assert j.scheme_for("model.layers.0.self_attn.q_proj").bits == 8
    assert j.scheme_for("model.layers.0.self_attn.o_proj") is None
    assert j.scheme_for("model.layers.4.mlp.up_proj") == QuantScheme(3, 64, False)
    assert j.scheme_for("lm_head") is None
    assert j.scheme_for("model.layers.0.other") == QuantScheme()


def test_preset_follows_base_group_and_symmetry():
    rules = preset_rules("attn8-ffn4", QuantScheme(4, 64, False))
    j = job(rules=rules)
    assert j.scheme_for("model.layers.1.self_attn.v_proj") == QuantScheme(8, 64, False)
    assert j.scheme_for("model.layers.1.mlp.down_proj") == QuantScheme(4, 64, False)
    with pytest.raises(ConfigError, match="not a preset"):
        preset_rules("nope", QuantScheme())


def test_rules_file_errors():
    with pytest.raises(ConfigError, match="not valid JSON"):
        rules_from_json("[{")
    with pytest.raises(ConfigError, match="must be a JSON list"):
        rules_from_json("{}")
    with pytest.raises(ConfigError, match=r"rules\[0\]: give a scheme"):
        rules_from_json('[{"pattern": "*"}]')
    with pytest.raises(ConfigError, match=r"rules\[0\].scheme.bits"):
        rules_from_json('[{"pattern": "*", "scheme": {"bits": 12}}]')
    rules = rules_from_json('[{"pattern": "*.mlp.*", "scheme": {"bits": 8}}, '
                            '{"pattern": "lm_head", "skip": true}]')
    assert rules[0].scheme == QuantScheme(8, 128, True) and rules[1].skip


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["model", "method", "out", "scheme", "rules", "skip", "gptq", "awq", "gguf",
                     "calibration", "device", "evaluate", "x"]), json_values, max_size=8))
def test_fuzz_job_parser_only_raises_config_errors(data):
    try:
        j = JobSpec.from_dict(data)
    except ConfigError:
        return
    assert JobSpec.from_json(j.to_json()) == j


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_job_json_text(text):
    try:
        job = JobSpec.from_json(text)
    except ConfigError:
        return
    assert JobSpec.from_json(job.to_json()) == job


def test_scheme_dict_is_plain_json():
    d = job().to_dict()
    assert json.loads(json.dumps(d)) == d
