import math

import pytest
from hypothesis import given, strategies as st

from ragcun.registry import normalize_name
from ragcun.spec import (Spec, Term, check_params, parse_set_option, parse_spec, settings_from_mapping,
                         settings_from_options)

names = st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,5}){0,2}", fullmatch=True)
weights = st.one_of(st.just(1.0), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False))
args = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_./\-]{1,20}", fullmatch=True))


@st.composite
def specs(draw, composable=True):
    n = draw(st.integers(1, 4)) if composable else 1
    chosen = draw(st.lists(names, min_size=n, max_size=n, unique=True))
    terms = tuple(Term(name, draw(weights) if composable else 1.0, draw(args)) for name in chosen)
    return Spec(terms)


@given(specs())
def test_parse_format_round_trip(spec):
    assert parse_spec(spec.format()) == spec


@given(specs(composable=False))
def test_single_term_round_trip(spec):
    assert parse_spec(spec.format(), composable=False) == spec


@given(st.text(max_size=30))
def test_normalize_name_idempotent(text):
    assert normalize_name(normalize_name(text)) == normalize_name(text)


def test_examples():
    spec = parse_spec("contrastive+0.05*isotropy+0.01*norm")
    assert spec.terms == (Term("contrastive"), Term("isotropy", 0.05), Term("norm", 0.01))
    assert spec.format() == "contrastive+0.05*isotropy+0.01*norm"
    assert parse_spec("Contrastive + 1e-3 * Iso_Tropy").format() == "contrastive+0.001*iso-tropy"
    assert parse_spec("2.5e+2*isotropy").terms[0].weight == 250.0
    assert parse_spec("1e+3*isotropy+contrastive").format() == "1000*isotropy+contrastive"
    # a name that ends in digit + 'e' is a name, not half of an exponent (found by hypothesis)
    assert parse_spec("a0e+a").terms == (Term("a0e"), Term("a"))
    assert parse_spec("a0e+0*a").terms == (Term("a0e"), Term("a", 0.0))


def test_paths_in_single_term_specs_may_contain_anything():
    spec = parse_spec("hf:/models/a+b:c", composable=False)
    assert spec.single == Term("hf", 1.0, "/models/a+b:c")


@pytest.mark.parametrize("bad, fragment", [
    ("", "empty spec"),
    ("contrastive++isotropy", "empty term"),
    ("contrastive+", "empty term"),
    ("abc*isotropy", "bad weight"),
    ("inf*isotropy", "finite"),
    ("0.1*", "cannot parse"),
    ("contrastive+isotropy+contrastive", "twice"),
    ("hf:", "empty argument"),
    ("#$%", "cannot parse"),
    ("2x+contrastive", "cannot parse"),
])
def test_invalid_specs_raise_value_error(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_spec(bad)


def test_weight_rejected_where_terms_do_not_compose():
    with pytest.raises(ValueError, match="only losses"):
        parse_spec("0.5*gaussian", composable=False)


def test_set_options_parse_typed_values():
    assert parse_set_option("loss.isotropy.num_slices=256") == ("loss", "isotropy", "num_slices", 256)
    assert parse_set_option("losses.Iso_tropy.t_max=3.5")[1:] == ("iso-tropy", "t_max", 3.5)
    assert parse_set_option("head.gaussian.logvar=true")[3] is True
    assert parse_set_option("encoder.hf.path=/a/b")[3] == "/a/b"
    settings = settings_from_options(["loss.isotropy.num_slices=8", "loss.isotropy.seed=1"])
    assert settings["loss"]["isotropy"] == {"num_slices": 8, "seed": 1}


@pytest.mark.parametrize("bad", ["loss.isotropy", "loss.isotropy=3", "optimizer.adam.lr=1", "a.b.c.d=1"])
def test_bad_set_options(bad):
    with pytest.raises(ValueError, match="--set"):
        parse_set_option(bad)


def test_toml_settings_and_constructor_check():
    settings = settings_from_mapping({"loss": {"isotropy": {"num_slices": 64}}, "train": {"steps": 3}})
    assert settings["loss"] == {"isotropy": {"num_slices": 64}}

    class Iso:
        def __init__(self, num_slices=1024, t_max=3.0, distance=None):
            pass

    check_params(Iso, {"num_slices": 4}, "loss.isotropy", reserved=("distance",))
    with pytest.raises(ValueError, match="did you mean loss.isotropy.num_slices"):
        check_params(Iso, {"num_slice": 4}, "loss.isotropy")
    with pytest.raises(ValueError, match="unknown setting loss.isotropy.distance"):
        check_params(Iso, {"distance": "x"}, "loss.isotropy", reserved=("distance",))


def test_weight_format_is_shortest_round_trip():
    for w in [0.1, 1 / 3, 1e-12, 123456.789, -2.0]:
        text = Term("x", w).format()
        assert math.isclose(parse_spec(text).terms[0].weight, w, rel_tol=0, abs_tol=0)
